"""Small string helpers shared by the streaming parsers.

Every parser holds back only the tail of its input that could still turn into a marker, so the
helpers here look at that tail alone and never rescan text already decided.
"""

from __future__ import annotations

from collections.abc import Sequence


def partial_marker_len(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``."""
    n = len(text)
    best = 0
    for marker in markers:
        window = min(n, len(marker) - 1)
        if window <= best:
            continue
        first = marker[0]
        i = text.find(first, n - window)
        # The earliest candidate is the longest, so the first match settles this marker.
        while i != -1 and n - i > best:
            if marker.startswith(text[i:]):
                best = n - i
                break
            i = text.find(first, i + 1)
    return best


def find_first(text: str, markers: Sequence[str], start: int = 0) -> tuple[int, str]:
    """The earliest occurrence of any marker (the longest one on a tie), or (-1, "")."""
    best = -1
    which = ""
    for marker in markers:
        i = text.find(marker, start)
        if i != -1 and (best == -1 or i < best or (i == best and len(marker) > len(which))):
            best, which = i, marker
    return best, which


def rstrip_len(text: str) -> int:
    """Length of ``text`` without its trailing whitespace."""
    if not text or not text[-1].isspace():
        return len(text)
    return len(text.rstrip())


def trim_newline(value: str) -> str:
    """Drop one leading and one trailing newline: XML formats put their values on own lines."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value
