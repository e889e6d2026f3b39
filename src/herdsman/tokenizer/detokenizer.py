"""Incremental detokenization: each new token costs O(1), whatever the output length.

Backed by ``tokenizers.decoders.DecodeStream``, which keeps a small window of ids and only emits
text once it forms complete UTF-8 characters, so a multi-byte character split across tokens is
never emitted half-way.

The stream is primed with the end of the prompt, as vLLM primes its own with the prompt: the
output's first token is then decoded as the prompt's continuation. That matters twice: a prompt
ending inside a character (a token-id prompt) shows that character with the output that
completes it, and decoders that drop the leading space of a text's first piece (SentencePiece
``Metaspace``/``Strip``) keep the space of the output's first word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# How much of the prompt primes the stream: the pieces of a character split over the prompt's
# last tokens (four bytes at most) and some text before them. Only prompts whose end decodes to
# nothing (special tokens skipped) are looked into further, up to _CONTEXT_MAX.
_CONTEXT = 6
_CONTEXT_MAX = 32


class IncrementalDetokenizer:
    __slots__ = ("_pending", "_skip", "_stream", "_tokenizer")

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        context: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        # Ids whose text the stream still holds back (an incomplete character so far).
        self._pending: list[int] = []
        if context:
            self._prime(context)

    def _prime(self, context: Sequence[int]) -> None:
        size = _CONTEXT
        tail = list(context[-size:])
        decode = self._tokenizer.decode
        while size < min(len(context), _CONTEXT_MAX) and not decode(
            tail, skip_special_tokens=self._skip
        ):
            size *= 2
            tail = list(context[-size:])
        try:
            # Stepped, not DecodeStream(ids=...): that one, given ids that end inside a
            # character, returns all of them as text with the next step (tokenizers 0.22).
            self.push(tail)
        except Exception:
            # A prompt the stream cannot take (an id outside the vocabulary, a decoder whose
            # text is not monotonic): decode the output on its own instead.
            self._stream = DecodeStream(skip_special_tokens=self._skip)
            self._pending.clear()

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
