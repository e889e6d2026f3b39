"""The model's tokenizer as the gateway uses it: ids in and out, special tokens, EOS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from herdsman.tokenizer.cache import Splitting, TokenizationCache, plan_splitting
from herdsman.tokenizer.chat_template import ChatTemplate
from herdsman.tokenizer.detokenizer import Decoding, IncrementalDetokenizer
from herdsman.tokenizer.shared_store import SharedSegmentStore


def encode_thread() -> ThreadPoolExecutor:
    """The one thread a process encodes long texts in, off its event loop.

    One, not asyncio's default pool of up to cores + 4: fastokens touches a 16 MB scratch buffer
    in every thread that encodes, and a gateway process has one core to encode with anyway
    (fastokens parallelises a long text over its own worker thread)."""
    global _ENCODE_THREAD
    if _ENCODE_THREAD is None:
        _ENCODE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="herdsman-encode")
    return _ENCODE_THREAD


_ENCODE_THREAD: ThreadPoolExecutor | None = None

# Characters encoded in about 2 ms on one core of the benchmark machine, per backend (measured
# on varied text: tokenizers ~6k chars/ms, fastokens ~30k chars/ms).
LONG_TEXT_CHARS = {"tokenizers": 12_000, "fastokens": 60_000}


@dataclass(slots=True)
class ModelTokenizer:
    # The reference (``tokenizers``); None once let go for fastokens (`decode_with`), and then
    # read again from `reload` only by what fastokens cannot do (see the `tokenizer` property).
    reference: Tokenizer | None
    chat_template: ChatTemplate | None
    eos_token_ids: tuple[int, ...]
    special_tokens: dict[str, Any] = field(default_factory=dict)
    model_max_length: int | None = None
    source: str = ""
    # A faster encoder proven to give the same ids (see fast_backend); None: use ``tokenizer``.
    fast_encode: Callable[[str, bool], list[int]] | None = None
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)
    _space_marker: str | bool | None = field(default=False, repr=False)  # False: not looked up
    # The model's sampling defaults from generation_config.json (see loader.sampling_defaults).
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    # Which end truncation removes tokens from (tokenizer_config.json; transformers' default).
    truncation_side: str = "right"
    cache: TokenizationCache | None = None
    tokenizer_file: Path | None = None
    _splitting: Splitting | bool | None = field(default=False, repr=False)  # False: not planned
    # What decodes: the reference, or fastokens once proven to decode alike (`decode_with`).
    decoding: Decoding = field(default=None, repr=False)  # type: ignore[assignment]
    reload: Callable[[], Tokenizer] | None = field(default=None, repr=False)
    _vocab_size: int = field(default=0, repr=False)
    # Single-id texts for the detokenizers' streams, by skip_special_tokens (WindowStream).
    _singles: tuple[dict[int, str], dict[int, str]] = field(
        default_factory=lambda: ({}, {}), repr=False
    )

    def __post_init__(self) -> None:
        if self.reference is not None:
            if self.decoding is None:
                self.decoding = self.reference
            self._vocab_size = self.reference.get_vocab_size(with_added_tokens=True)

    @property
    def tokenizer(self) -> Tokenizer:
        """The reference tokenizer, read again if it was let go (`decode_with`): for the paths
        fastokens does not serve (truncating pooling inputs, encoding without a fast encoder)."""
        return self.hold_reference()

    def hold_reference(self) -> Tokenizer:
        """The reference, read again now if it was let go."""
        if self.reference is None:
            if self.reload is None:
                raise RuntimeError(f"the reference tokenizer of {self.source} is gone")
            self.reference = self.reload()
        return self.reference

    def decode_with(self, fast: Decoding) -> None:
        """Decode with ``fast`` (proven to decode alike: fast_backend.decodes_alike) and let the
        reference go, when it can be read again: the process then holds one tokenizer."""
        if self.reload is None:
            return
        self._leading_space_marker()  # read from the reference while it is here
        self.decoding = fast
        self.reference = None

    @property
    def decodes_with(self) -> str:
        return "tokenizers" if isinstance(self.decoding, Tokenizer) else "fastokens"

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
        return self._vocab_size

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            encode_thread(), self._encode_without_gil, texts, add_special_tokens
        )

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
        return self.decoding.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(
        self, *, skip_special_tokens: bool = True, context: Sequence[int] = ()
    ) -> IncrementalDetokenizer:
        """A detokenizer for output that continues ``context`` (the prompt's ids)."""
        return IncrementalDetokenizer(
            self.decoding,
            skip_special_tokens=skip_special_tokens,
            context=context,
            singles=self._singles[skip_special_tokens],
        )

    def token_text(self, token_id: int) -> str:
        """One token decoded on its own, as vLLM reports it in logprobs (cached per id).

        SentencePiece-style decoders drop the leading space of a text's first piece; a token
        shown alone keeps it, as vLLM restores it (``convert_ids_list_to_tokens``).
        """
        text = self._token_texts.get(token_id)
        if text is None:
            text = self.decoding.decode([token_id], skip_special_tokens=False)
            marker = self._leading_space_marker()
            if marker is not None:
                raw = self.decoding.id_to_token(token_id) or ""
                markers = len(raw) - len(raw.lstrip(marker))
                missing = markers - (len(text) - len(text.lstrip(" ")))
                if missing > 0:
                    text = " " * missing + text
            self._token_texts[token_id] = text
        return text

    def token_text_in_context(self, token_id: int, context: Sequence[int]) -> str:
        """A token's logprob text given the up to four tokens sampled before it, as vLLM
        renders it (``_correct_decoded_token``): alone, a piece of a multi-byte character
        decodes to U+FFFD; with its predecessors it may complete the character, and then it
        is shown as the text it completes (the predecessors that were pieces too showed "").
        Still incomplete after four: "".
        """
        text = self.token_text(token_id)
        if not text.endswith("\ufffd"):
            return text
        decode = self.decoding.decode
        for n in range(1, min(len(context), 4) + 1):
            window = list(context[-n:])
            full = decode([*window, token_id], skip_special_tokens=False)
            if full.endswith("\ufffd"):
                continue
            clean_end = len(window)
            while clean_end > 0 and self.token_text(window[clean_end - 1]).endswith("\ufffd"):
                clean_end -= 1
            prefix = decode(window[:clean_end], skip_special_tokens=False) if clean_end else ""
            if full.startswith(prefix):
                return full[len(prefix) :]
            common = 0
            for a, b in zip(prefix, full, strict=False):
                if a != b:
                    break
                common += 1
            return full[common:]
        return ""

    def token_piece(self, token_id: int) -> str | None:
        """The vocabulary's own string for an id ("Ġhello", "▁hello"), as vLLM's /tokenize
        returns ``token_strs``."""
        return self.decoding.id_to_token(token_id)

    def _leading_space_marker(self) -> str | None:
        """The Metaspace replacement character when the pre-tokenizer is Metaspace (alone or in a
        sequence), else None: the only pre-tokenizer whose decode strips a leading space."""
        marker = self._space_marker
        if marker is False:
            marker = None
            try:
                state = self.tokenizer.pre_tokenizer
                pre = json.loads(state.__getstate__()) if state is not None else {}
            except (ValueError, AttributeError):
                pre = {}
            subs = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
            for sub in subs:
                if isinstance(sub, dict) and sub.get("type") == "Metaspace":
                    marker = sub.get("replacement", "\u2581")
                    break
            self._space_marker = marker
        return marker if isinstance(marker, str) else None

    def token_id(self, token: str) -> int | None:
        return self.decoding.token_to_id(token)
