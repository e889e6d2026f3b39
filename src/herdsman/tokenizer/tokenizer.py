"""The model's tokenizer as the gateway uses it: ids in and out, special tokens, EOS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from herdsman.tokenizer.cache import Splitting, TokenizationCache, plan_splitting
from herdsman.tokenizer.chat_template import ChatTemplate
from herdsman.tokenizer.detokenizer import IncrementalDetokenizer
from herdsman.tokenizer.shared_store import SharedSegmentStore

# Characters encoded in about 2 ms on one core of the benchmark machine, per backend (measured
# on varied text: tokenizers ~6k chars/ms, fastokens ~30k chars/ms).
LONG_TEXT_CHARS = {"tokenizers": 12_000, "fastokens": 60_000}


@dataclass(slots=True)
class ModelTokenizer:
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    eos_token_ids: tuple[int, ...]
    special_tokens: dict[str, Any] = field(default_factory=dict)
    model_max_length: int | None = None
    source: str = ""
    # A faster encoder proven to give the same ids (see fast_backend); None: use ``tokenizer``.
    fast_encode: Callable[[str, bool], list[int]] | None = None
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)
    cache: TokenizationCache | None = None
    tokenizer_file: Path | None = None
    _splitting: Splitting | bool | None = field(default=False, repr=False)  # False: not planned

    def enable_cache(
        self, l0_bytes: int, l1_bytes: int, shared: SharedSegmentStore | None = None
    ) -> TokenizationCache | None:
        """Put the two-level cache in front of the encoder (budgets in bytes; 0 disables).

        `shared`, the store the gateway's processes share, backs L1 when given.
        """
        if l0_bytes <= 0 and l1_bytes <= 0:
            self.cache = None
            return None
        raw = self._raw_encode
        if self._splitting is False:
            self._splitting = (
                plan_splitting(self.tokenizer_file, raw) if self.tokenizer_file else None
            )
        splitting = self._splitting if isinstance(self._splitting, Splitting) else None
        self.cache = TokenizationCache(raw, splitting, l0_bytes, l1_bytes, shared)
        return self.cache

    @property
    def backend(self) -> str:
        return "fastokens" if self.fast_encode is not None else "tokenizers"

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        if self.cache is not None:
            return self.cache.encode(text, add_special_tokens)
        return self._raw_encode(text, add_special_tokens)

    async def encode_async(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """`encode` that keeps the event loop free: what must be encoded of a long text is
        encoded in a thread, with the GIL released (a 40k-token prompt held a loop for 100 ms)."""
        if len(text) < self.long_text_chars:
            return self.encode(text, add_special_tokens=add_special_tokens)
        if self.cache is not None:
            return await self.cache.encode_long(text, add_special_tokens, self._encode_many)
        return (await self._encode_many([text], add_special_tokens))[0]

    @property
    def long_text_chars(self) -> int:
        """Texts from this length on are encoded off the loop: about 2 ms of encoding."""
        return LONG_TEXT_CHARS[self.backend]

    async def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if sum(map(len, texts)) < self.long_text_chars:
            return [self._raw_encode(t, add_special_tokens) for t in texts]
        return await asyncio.to_thread(self._encode_without_gil, texts, add_special_tokens)

    def _encode_without_gil(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if self.fast_encode is not None:  # fastokens releases the GIL in encode
            return [self.fast_encode(t, add_special_tokens) for t in texts]
        # tokenizers' encode holds the GIL throughout; encode_batch releases it.
        batch = self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in batch]

    def _raw_encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if self.fast_encode is not None:
            return self.fast_encode(text, add_special_tokens)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, *, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token decoded on its own (as logprobs report it), cached per id."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode(
                [token_id], skip_special_tokens=False
            )
        return text

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)
