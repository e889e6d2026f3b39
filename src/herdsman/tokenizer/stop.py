"""Stop strings over streamed text.

Text that might be the start of a stop string is held back until the next delta decides it, so
the client never sees text past a stop, and streamed output equals the non-streamed output.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopChecker:
    __slots__ = ("_held", "_keep", "_max_len", "_stops", "matched")

    def __init__(self, stops: Sequence[str], *, keep_stop: bool = False) -> None:
        self._stops = tuple(s for s in stops if s)
        self._keep = keep_stop  # include_stop_str_in_output / no_stop_trim
        self._max_len = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.matched: str | None = None

    @property
    def active(self) -> bool:
        return bool(self._stops)

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit; set ``matched`` when a stop string appears."""
        if self.matched is not None:
            return ""
        held = len(self._held)
        buffer = self._held + text
        # The stop that is complete first wins (on a tie, the first in the request's list, as
        # vLLM decides), as if the text came one character at a time: the result must not
        # depend on how it is chunked. A match must end in the new text: one that ends in the
        # held text lies in text where no stop may end (``hold``).
        first_at = first_end = -1
        for stop in self._stops:
            at = buffer.find(stop, max(0, held - len(stop) + 1))
            end = at + len(stop)
            if at >= 0 and (first_at < 0 or end < first_end):
                first_at, first_end, self.matched = at, end, stop
        if first_at >= 0:
            self._held = ""
            assert self.matched is not None
            return buffer[: first_at + len(self.matched)] if self._keep else buffer[:first_at]
        keep = self._partial_suffix_len(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def hold(self, text: str) -> str:
        """Like ``feed``, for text in which no stop may end (the first ``min_tokens`` tokens'):
        a stop may still start in it and end in later text, so its tail is held as usual."""
        if self.matched is not None:
            return ""
        buffer = self._held + text
        keep = self._partial_suffix_len(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation, release what was held back (it never became a stop)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _partial_suffix_len(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of some stop."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
