"""The fast encoder is used only with token-id parity, which these properties hold it to."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import LLAMA3, QWEN3

from herdsman.tokenizer import load_model_tokenizer

PAIRS = {
    path.name: (load_model_tokenizer(path), load_model_tokenizer(path, fast=False))
    for path in (QWEN3, LLAMA3)
}

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200) | st.lists(
    st.sampled_from(
        [
            "<|im_start|>",
            "<|im_end|>",
            "<|eot_id|>",
            " ",
            "\n",
            "hi",
            "42",
            "日本",
            "🙂",
            "  ",
            "'s",
            "x",
        ]
    ),
    max_size=30,
).map("".join)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_fast_backend_selected(name: str) -> None:
    fast, reference = PAIRS[name]
    assert fast.backend == "fastokens"
    assert reference.backend == "tokenizers"


@pytest.mark.parametrize("name", sorted(PAIRS))
@settings(max_examples=300, deadline=None)
@given(sample=text, special=st.booleans())
def test_fast_equals_reference(name: str, sample: str, special: bool) -> None:
    fast, reference = PAIRS[name]
    assert fast.encode(sample, add_special_tokens=special) == reference.encode(
        sample, add_special_tokens=special
    )


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_fast_equals_reference_on_rendered_chat(name: str) -> None:
    fast, reference = PAIRS[name]
    assert fast.chat_template is not None
    messages = [
        {"role": "system", "content": "You are terse. " * 50},
        {"role": "user", "content": "Grüße 🙂\n\n  code:\n\tx = 1"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "again " * 300},
    ]
    prompt = fast.chat_template.render(messages)
    assert fast.encode(prompt, add_special_tokens=False) == reference.encode(
        prompt, add_special_tokens=False
    )
