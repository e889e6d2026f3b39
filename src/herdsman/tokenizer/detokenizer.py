"""Incremental detokenization: each new token costs O(1), whatever the output length.

Backed by ``tokenizers.decoders.DecodeStream``, which keeps a small window of ids and only emits
text once it forms complete UTF-8 characters, so a multi-byte character split across tokens is
never emitted half-way.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class IncrementalDetokenizer:
    __slots__ = ("_pending", "_skip", "_stream", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        # Ids whose text the stream still holds back (an incomplete character so far).
        self._pending: list[int] = []

    def push(self, token_ids: Iterable[int]) -> str:
        """Feed newly generated ids; return the text they complete (possibly empty)."""
        step = self._stream.step
        tokenizer = self._tokenizer
        pending = self._pending
        out: list[str] = []
        for token_id in token_ids:
            piece = step(tokenizer, token_id)
            if piece is None:
                pending.append(token_id)
            else:
                pending.clear()
                if piece:
                    out.append(piece)
        if not out:
            return ""
        return out[0] if len(out) == 1 else "".join(out)

    def discard(self) -> None:
        """Forget the held-back ids (the output ends inside a character)."""
        self._pending.clear()

    def flush(self) -> str:
        """At the end of generation: what the held-back ids decode to (with U+FFFD for bytes
        that never completed a character), so that all text equals one decode of all ids."""
        if not self._pending:
            return ""
        text = self._tokenizer.decode(self._pending, skip_special_tokens=self._skip)
        self._pending.clear()
        return text
