"""Incremental detokenization: each new token costs O(1), whatever the output length.

Backed by ``tokenizers.decoders.DecodeStream``, which keeps a small window of ids and only emits
text once it forms complete UTF-8 characters, so a multi-byte character split across tokens is
never emitted half-way. A model that decodes with fastokens (one tokenizer copy, see
fast_backend.decodes_alike) gets `WindowStream`, the same algorithm over fastokens' decode.

The stream is primed with the end of the prompt, as vLLM primes its own with the prompt: the
output's first token is then decoded as the prompt's continuation. That matters twice: a prompt
ending inside a character (a token-id prompt) shows that character with the output that
completes it, and decoders that drop the leading space of a text's first piece (SentencePiece
``Metaspace``/``Strip``) keep the space of the output's first word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# How much of the prompt primes the stream: the pieces of a character split over the prompt's
# last tokens (four bytes at most) and some text before them. Only prompts whose end decodes to
# nothing (special tokens skipped) are looked into further, up to _CONTEXT_MAX.
_CONTEXT = 6
_CONTEXT_MAX = 32


class Decoding(Protocol):
    """What decoding needs of a tokenizer: ``tokenizers.Tokenizer`` and fastokens' both have it
    (a detokenizer only calls ``decode``)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...

    def id_to_token(self, id: int) -> str | None: ...

    def token_to_id(self, token: str) -> int | None: ...


class InvalidPrefix(ValueError):
    """The window's text no longer starts with what was emitted (a non-monotonic decoder)."""


class WindowStream:
    """``DecodeStream``'s algorithm (tokenizers 0.22, ``step_decode_stream``) over any decode.

    It keeps the ids since the last emitted text but one and that one's text (the prefix); each
    step decodes the window and emits what it adds to the prefix, unless it ends in U+FFFD (a
    character still incomplete), which holds it back. Lengths are compared in UTF-8 bytes as
    Rust does; when the text extends the prefix, comparing characters is the same thing.
    """

    __slots__ = ("_ids", "_prefix", "_prefix_index", "_singles", "_skip")

    def __init__(self, skip_special_tokens: bool, singles: dict[int, str] | None = None) -> None:
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = ""
        self._prefix_index = 0
        # Text of one id alone, shared by a model's streams: in the common step the window
        # left is the one id just emitted, and its text is then a lookup, not a second decode.
        self._singles = singles if singles is not None else {}

    def step(self, tokenizer: Decoding, token_id: int) -> str | None:
        ids = self._ids
        ids.append(token_id)
        text = tokenizer.decode(ids, skip_special_tokens=self._skip)
        prefix = self._prefix
        if text.startswith(prefix):
            if len(text) <= len(prefix) or text.endswith("\ufffd"):
                return None
        elif len(text.encode()) > len(prefix.encode()) and not text.endswith("\ufffd"):
            raise InvalidPrefix(text, prefix)
        else:
            return None
        index = self._prefix_index
        self._prefix_index = len(ids) - index
        del ids[:index]
        if len(ids) == 1:
            singles = self._singles
            alone = singles.get(token_id)
            if alone is None:
                alone = tokenizer.decode(ids, skip_special_tokens=self._skip)
                if len(singles) < _SINGLES_MAX:
                    singles[token_id] = alone
            self._prefix = alone
        else:
            self._prefix = tokenizer.decode(ids, skip_special_tokens=self._skip)
        return text[len(prefix) :]


# Ids whose text alone a model keeps per skip_special_tokens (a few MB at most).
_SINGLES_MAX = 65_536


def _stream(
    tokenizer: Any, skip_special_tokens: bool, singles: dict[int, str] | None
) -> DecodeStream | WindowStream:
    if isinstance(tokenizer, Tokenizer):
        return DecodeStream(skip_special_tokens=skip_special_tokens)
    return WindowStream(skip_special_tokens, singles)


class IncrementalDetokenizer:
    __slots__ = ("_pending", "_singles", "_skip", "_stream", "_tokenizer")

    def __init__(
        self,
        tokenizer: Tokenizer | Decoding,
        *,
        skip_special_tokens: bool = True,
        context: Sequence[int] = (),
        singles: dict[int, str] | None = None,
    ) -> None:
        """`singles`: the model's cache of single-id texts for this `skip_special_tokens`
        (see WindowStream)."""
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._singles = singles
        self._stream = _stream(tokenizer, skip_special_tokens, singles)
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
            self._stream = _stream(self._tokenizer, self._skip, self._singles)
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
