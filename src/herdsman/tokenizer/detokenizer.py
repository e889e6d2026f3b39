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
    __slots__ = ("_stream", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def push(self, token_ids: Iterable[int]) -> str:
        """Feed newly generated ids; return the text they complete (possibly empty)."""
        step = self._stream.step
        tokenizer = self._tokenizer
        out: list[str] = []
        for token_id in token_ids:
            piece = step(tokenizer, token_id)
            if piece:
                out.append(piece)
        if not out:
            return ""
        return out[0] if len(out) == 1 else "".join(out)
