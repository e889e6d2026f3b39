"""The L0/L1 tokenization cache never changes a token id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import LLAMA3, QWEN3

from herdsman.tokenizer import load_model_tokenizer

REFERENCE = {p.name: load_model_tokenizer(p, fast=False) for p in (QWEN3, LLAMA3)}
MARKERS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>", "<tool_call>"]

piece = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40) | (
    st.lists(
        st.sampled_from([*MARKERS, " ", "\n", "\n\n", "  ", "hi", "'s", "42", "🙂"]), max_size=8
    ).map("".join)
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": piece}
)


LOADED = {p.name: load_model_tokenizer(p) for p in (QWEN3, LLAMA3)}


def cached(path: Path, l0: int, l1: int):
    tokenizer = LOADED[path.name]
    tokenizer.enable_cache(l0, l1)  # a fresh, empty cache each time
    return tokenizer


@pytest.mark.parametrize("path", [QWEN3, LLAMA3], ids=lambda p: p.name)
@pytest.mark.parametrize("budget", [1 << 26, 2048], ids=["roomy", "evicting"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    turns=st.lists(st.lists(message, min_size=1, max_size=3), min_size=1, max_size=5),
    special=st.booleans(),
)
def test_cached_equals_uncached_over_growing_chats(path: Path, budget: int, turns, special) -> None:
    tokenizer = cached(path, budget, budget)
    reference = REFERENCE[path.name]
    assert tokenizer.cache is not None and tokenizer.cache.l1_enabled
    assert tokenizer.chat_template is not None
    conversation: list[dict[str, str]] = []
    for turn in turns:
        conversation.extend(turn)
        prompt = tokenizer.chat_template.render(conversation)
        for _ in range(2):  # the second pass is an L0 hit
            assert tokenizer.encode(prompt, add_special_tokens=special) == reference.encode(
                prompt, add_special_tokens=special
            )


@pytest.mark.parametrize("path", [QWEN3, LLAMA3], ids=lambda p: p.name)
def test_later_turns_hit_l1(path: Path) -> None:
    tokenizer = cached(path, 1 << 26, 1 << 26)
    assert tokenizer.chat_template is not None and tokenizer.cache is not None
    conversation = [{"role": "system", "content": "Be brief. " * 200}]
    for i in range(6):
        conversation.append({"role": "user", "content": f"question {i} " * 50})
        tokenizer.encode(tokenizer.chat_template.render(conversation), add_special_tokens=False)
        conversation.append({"role": "assistant", "content": f"answer {i} " * 50})
    l1 = tokenizer.cache.l1
    assert l1 is not None
    # Each turn adds two new segments at most; every older one is a hit.
    assert l1.hits > 3 * l1.misses
    assert l1.size > 0 and len(l1) == l1.misses


def test_non_atomic_special_tokens_fall_back(tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN3 / name, tmp_path / name)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        if token["content"] == "<|im_start|>":
            token["lstrip"] = True  # now it eats the whitespace before it: not atomic
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tokenizer = load_model_tokenizer(tmp_path)
    reference = load_model_tokenizer(tmp_path, fast=False)
    cache = tokenizer.enable_cache(1 << 20, 1 << 20)
    assert cache is not None and not cache.l1_enabled and cache.l0 is not None
    text = "a  <|im_start|>user\nhi<|im_end|>\n   <|im_start|>x"
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(
        text, add_special_tokens=False
    )


def test_disabled_cache() -> None:
    tokenizer = load_model_tokenizer(QWEN3)
    assert tokenizer.enable_cache(0, 0) is None
    assert tokenizer.cache is None
