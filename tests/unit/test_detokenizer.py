from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import LLAMA3, QWEN3

from herdsman.tokenizer import load_model_tokenizer

TOKENIZERS = {path.name: load_model_tokenizer(path) for path in (QWEN3, LLAMA3)}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_incremental_equals_full_decode(name: str, data: st.DataObject) -> None:
    tok = TOKENIZERS[name]
    # Ordinary ids mixed with low ids, which hold the byte tokens that split multi-byte
    # characters (and special tokens at the top of the vocabulary, skipped or kept).
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1) | st.integers(0, 400), max_size=40))
    skip = data.draw(st.booleans())
    detok = tok.detokenizer(skip_special_tokens=skip)
    pieces = [detok.push([i]) for i in ids]
    # Deltas never end inside a character; at the end, flush releases what never completed.
    assert all(not p.endswith("\ufffd") or "\ufffd" in tok.decode(ids) for p in pieces)
    assert "".join(pieces) + detok.flush() == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_multibyte_characters_are_never_split(name: str) -> None:
    tok = TOKENIZERS[name]
    text = "naïve café — 日本語のテキスト 🙂🚀 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = tok.detokenizer()
    pieces = [detok.push([i]) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_skipped_or_kept() -> None:
    tok = TOKENIZERS["qwen3"]
    ids = tok.encode("<|im_start|>assistant\nhi<|im_end|>", add_special_tokens=False)
    skip = tok.detokenizer(skip_special_tokens=True)
    keep = tok.detokenizer(skip_special_tokens=False)
    assert "".join(skip.push([i]) for i in ids) == "assistant\nhi"
    assert "".join(keep.push([i]) for i in ids) == "<|im_start|>assistant\nhi<|im_end|>"
