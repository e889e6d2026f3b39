"""The model's tokenizer as the gateway uses it: ids in and out, special tokens, EOS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from herdsman.tokenizer.chat_template import ChatTemplate
from herdsman.tokenizer.detokenizer import IncrementalDetokenizer


@dataclass(slots=True)
class ModelTokenizer:
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    eos_token_ids: tuple[int, ...]
    special_tokens: dict[str, str | None] = field(default_factory=dict)
    model_max_length: int | None = None
    source: str = ""
    # A faster encoder proven to give the same ids (see fast_backend); None: use ``tokenizer``.
    fast_encode: Callable[[str, bool], list[int]] | None = None
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def backend(self) -> str:
        return "fastokens" if self.fast_encode is not None else "tokenizers"

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
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
