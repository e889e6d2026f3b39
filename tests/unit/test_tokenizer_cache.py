"""The L0/L1 tokenization cache never changes a token id, for every fixture tokenizer."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import QWEN3
from tests.fixture_tokenizers import CHAT_MODELS, TOKENIZERS, tokenizer, with_cache

from herdsman.tokenizer import ModelTokenizer, load_model_tokenizer
from herdsman.tokenizer.cache import Splitting, encode_segments

# What load time decides for each model: the backend, and whether L1 segment splicing is on.
# DeepSeek's added tokens say "normalized": true, so the atomicity check turns L1 off, although
# its normalizer is empty (test_segmentwise_encoding_over_all_added_tokens shows splicing would
# be exact there too).
EXPECTED = {
    "qwen3": ("fastokens", True),
    "llama3": ("fastokens", True),
    "deepseek_v3": ("fastokens", True),
    "deepseek_v3_1": ("fastokens", True),
    "deepseek_v4": ("fastokens", True),
    "gpt_oss": ("fastokens", True),
}
# deepseek_v4 ships no chat template: its conversations are joined with its own markers.
PLAIN_FORMAT = {
    "deepseek_v4": {
        "system": "",
        "user": "<｜User｜>",
        "assistant": "<｜Assistant｜>",
        "end": "<｜end▁of▁sentence｜>",
    }
}
OTHER_MARKERS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<tool_call>", "<think>", "</think>"]


@functools.cache
def markers(name: str) -> list[str]:
    """The model's own added tokens (but not hundreds of placeholders) and other models' ones."""
    added = tokenizer(name, fast=False).tokenizer.get_added_tokens_decoder()
    own = [
        t.content
        for _, t in sorted(added.items())
        if not re.search(r"reserved|place▁holder|<\|fim|vision|quad|box", t.content)
    ]
    return own[:40] + OTHER_MARKERS


def render(name: str, tok: ModelTokenizer, conversation: Sequence[dict[str, str]]) -> str:
    if tok.chat_template is not None:
        return tok.chat_template.render(conversation)
    fmt = PLAIN_FORMAT[name]
    text = tok.special_tokens.get("bos_token", "")
    for message in conversation:
        text += fmt[message["role"]] + message["content"]
        if message["role"] == "assistant":
            text += fmt["end"]
    return text + fmt["assistant"]


@st.composite
def chats(draw: st.DrawFn, name: str) -> list[list[dict[str, str]]]:
    piece = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40) | (
        st.lists(
            st.sampled_from([*markers(name), " ", "\n", "\n\n", "  ", "hi", "'s", "42", "🙂"]),
            max_size=8,
        ).map("".join)
    )
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": piece}
    )
    return draw(st.lists(st.lists(message, min_size=1, max_size=3), min_size=1, max_size=5))


BUDGETS = {
    "roomy": (1 << 26, 1 << 26),
    "evicting": (2048, 2048),
    "l1-only-evicting": (0, 1024),  # every encode goes through L1, which keeps evicting
}


@pytest.mark.parametrize("name", CHAT_MODELS)
def test_load_time_decisions(name: str) -> None:
    backend, l1 = EXPECTED[name]
    tok = with_cache(name, 1 << 20, 1 << 20)
    assert tok.backend == backend
    assert tok.cache is not None and tok.cache.l1_enabled == l1


@pytest.mark.parametrize("name", CHAT_MODELS)
@pytest.mark.parametrize("budget", sorted(BUDGETS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), special=st.booleans())
def test_cached_equals_uncached_over_growing_chats(
    name: str, budget: str, data: st.DataObject, special: bool
) -> None:
    # A fresh cache per example: the first turn meets an empty cache, later turns a warm one.
    tok = with_cache(name, *BUDGETS[budget])
    reference = tokenizer(name.replace("deepseek_v3_1", "deepseek_v3"), fast=False)
    conversation: list[dict[str, str]] = []
    for turn in data.draw(chats(name)):
        conversation.extend(turn)
        prompt = render(name, tok, conversation)
        expected = reference.encode(prompt, add_special_tokens=special)
        for _ in range(2):  # the second pass is an L0 hit (when L0 is on and the text fits)
            assert tok.encode(prompt, add_special_tokens=special) == expected


def long_chat(turns: int) -> list[dict[str, str]]:
    conversation = [{"role": "system", "content": "Be brief. " * 200}]
    for i in range(turns):
        conversation.append({"role": "user", "content": f"question {i} " * 50})
        conversation.append({"role": "assistant", "content": f"answer {i} " * 50})
    return conversation


@pytest.mark.parametrize("name", [n for n in CHAT_MODELS if EXPECTED[n][1]])
def test_later_turns_hit_l1(name: str) -> None:
    tok = with_cache(name, 1 << 26, 1 << 26)
    assert tok.cache is not None
    conversation = long_chat(6)
    for end in range(2, len(conversation), 2):
        tok.encode(render(name, tok, conversation[:end]), add_special_tokens=False)
    l1 = tok.cache.l1
    assert l1 is not None
    # Each turn adds a few new segments; every older one is a hit. A segment repeated within
    # one prompt ("\n" between turns) is looked up once, so each distinct one misses once.
    assert l1.hits > 2 * l1.misses
    assert (
        l1.size > 0 and 0 < len(l1) == l1.misses
    )  # each distinct segment missed once, then stored


@pytest.mark.parametrize("name", [n for n in CHAT_MODELS if EXPECTED[n][1]])
def test_l1_evictions_keep_ids_exact(name: str) -> None:
    tok = with_cache(name, 0, 4096)  # smaller than one conversation's segments
    reference = tokenizer(name, fast=False)
    conversation = long_chat(6)
    for end in [*range(2, len(conversation), 2), 4, 2]:  # growing, then back to early turns
        prompt = render(name, tok, conversation[:end])
        for special in (False, True):
            assert tok.encode(prompt, add_special_tokens=special) == reference.encode(
                prompt, add_special_tokens=special
            )
    assert tok.cache is not None and tok.cache.l1 is not None
    assert tok.cache.l1.evictions > 0


@functools.cache
def all_added_tokens_splitting(name: str) -> Splitting:
    """Cut at every added token, atomic-looking or not (what plan_splitting would do if the
    atomicity check let every token through)."""
    tok = tokenizer(name, fast=False)
    tokens = {t.content: i for i, t in tok.tokenizer.get_added_tokens_decoder().items()}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    return Splitting(pattern, tokens, tuple(tok.encode("", add_special_tokens=True)))


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=100, deadline=None)
@given(data=st.data(), special=st.booleans())
def test_segmentwise_encoding_over_all_added_tokens(
    name: str, data: st.DataObject, special: bool
) -> None:
    """encode(text) == concat(encode(segment) | token id), the identity L1 relies on."""
    tok = tokenizer(name, fast=False)
    text = data.draw(
        st.lists(
            st.sampled_from([*markers(name), " ", "\n", "  ", "x", "'s", "42", "é", "🙂"])
            | st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
            max_size=20,
        ).map("".join)
    )

    def encode(t: str, s: bool) -> list[int]:
        return tok.encode(t, add_special_tokens=s)

    splitting = all_added_tokens_splitting(name)
    assert encode_segments(splitting, text, special, encode) == encode(text, special)


def test_non_atomic_special_tokens_fall_back(tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN3 / name, tmp_path / name)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        if token["content"] == "<|im_start|>":
            token["lstrip"] = True  # now it eats the whitespace before it: not atomic
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = load_model_tokenizer(tmp_path)
    reference = load_model_tokenizer(tmp_path, fast=False)
    cache = tok.enable_cache(1 << 20, 1 << 20)
    assert cache is not None and not cache.l1_enabled and cache.l0 is not None
    text = "a  <|im_start|>user\nhi<|im_end|>\n   <|im_start|>x"
    assert tok.encode(text, add_special_tokens=False) == reference.encode(
        text, add_special_tokens=False
    )


def test_disabled_cache() -> None:
    tok = with_cache("qwen3", 1 << 20, 1 << 20)
    assert tok.enable_cache(0, 0) is None
    assert tok.cache is None
