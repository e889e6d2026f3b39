"""The fast encoder is used only with token-id parity, which these properties hold it to."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixture_tokenizers import TOKENIZERS, tokenizer
from tokenizers import Tokenizer

from herdsman.tokenizer.fast_backend import EncodeProbes

# What the load-time probes decide; every fixture tokenizer passes them today.
FAST = {name: "fastokens" for name in TOKENIZERS}

COMMON = [" ", "\n", "hi", "42", "日本", "🙂", "  ", "'s", "x", "\t", "\r\n", "1234", "É", "’re"]


@functools.cache
def markers(name: str) -> list[str]:
    added = tokenizer(name, fast=False).tokenizer.get_added_tokens_decoder()
    own = [
        t.content for _, t in sorted(added.items()) if not re.search(r"reserved|holder", t.content)
    ]
    return [*own[:30], "<|im_start|>", "<|im_end|>", "<|eot_id|>"]


def texts(name: str) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200) | (
        st.lists(st.sampled_from([*markers(name), *COMMON]), max_size=30).map("".join)
    )


@pytest.mark.parametrize("name", TOKENIZERS)
def test_fast_backend_selected(name: str) -> None:
    assert tokenizer(name).backend == FAST[name]
    assert tokenizer(name, fast=False).backend == "tokenizers"


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=300, deadline=None)
@given(data=st.data(), special=st.booleans())
def test_fast_equals_reference(name: str, data: st.DataObject, special: bool) -> None:
    fast, reference = tokenizer(name), tokenizer(name, fast=False)
    sample = data.draw(texts(name))
    assert fast.encode(sample, add_special_tokens=special) == reference.encode(
        sample, add_special_tokens=special
    )


@pytest.mark.parametrize("name", TOKENIZERS)
def test_fast_equals_reference_on_rendered_chat(name: str) -> None:
    fast, reference = tokenizer(name), tokenizer(name, fast=False)
    messages = [
        {"role": "system", "content": "You are terse. " * 50},
        {"role": "user", "content": "Grüße 🙂\n\n  code:\n\tx = 1"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "again " * 300},
    ]
    if fast.chat_template is not None:
        prompt = fast.chat_template.render(messages)
    else:  # deepseek_v4 ships no template
        prompt = "".join(f"<｜{m['role'].title()}｜>{m['content']}" for m in messages)
    for special in (False, True):
        assert fast.encode(prompt, add_special_tokens=special) == reference.encode(
            prompt, add_special_tokens=special
        )


@pytest.mark.parametrize("fast", [True, False])
def test_llama_class_config_adds_bos_as_transformers_does(fast: bool) -> None:
    """DeepSeek-V3: tokenizer.json adds nothing, but LlamaTokenizerFast with add_bos_token
    rebuilds the post-processor in transformers, so a plain encode starts with BOS."""
    from tests.fixture_tokenizers import model_dir

    from herdsman.tokenizer import load_model_tokenizer

    tok = load_model_tokenizer(model_dir("deepseek_v3"), fast=fast)
    assert tok.backend == ("fastokens" if fast else "tokenizers")
    bos = tok.token_id("<｜begin▁of▁sentence｜>")
    plain = tok.encode("Hello world", add_special_tokens=False)
    assert tok.encode("Hello world", add_special_tokens=True) == [bos, *plain]
    # Models whose config does not ask for it are left as their tokenizer.json says.
    gpt = tokenizer("gpt_oss")
    assert gpt.encode("Hello", add_special_tokens=True) == gpt.encode(
        "Hello", add_special_tokens=False
    )


def test_qwen2_5_vl_has_its_own_added_tokens() -> None:
    """Same vocabulary as Qwen3, but <think> and <tool_response> are Qwen3's additions:
    Qwen2.5-VL (tokenizer.json converted by transformers, scripts/qwen2_5_vl_tokenizer.py)
    encodes them as plain text."""
    from tests.conftest import MODELS

    from herdsman.tokenizer import load_model_tokenizer

    vl = load_model_tokenizer(MODELS / "qwen2_5_vl")
    qwen3 = tokenizer("qwen3")
    assert vl.backend == "fastokens"
    for text in ("<think>", "</think>", "<tool_response>", "</tool_response>"):
        assert vl.token_id(text) is None and qwen3.token_id(text) is not None
        assert len(vl.encode(text, add_special_tokens=False)) > 1
    chat = "<|im_start|>user\nDescribe <|vision_start|><|image_pad|><|vision_end|> please<|im_end|>"
    assert vl.encode(chat, add_special_tokens=False) == qwen3.encode(chat, add_special_tokens=False)


class _Altered:
    """fastokens' tokenizer, but one method answers differently for one input."""

    def __init__(self, fast: object, method: str, when: object, answer: object) -> None:
        self._fast, self._method, self._when, self._answer = fast, method, when, answer

    def __getattr__(self, name: str) -> object:
        real = getattr(self._fast, name)
        if name != self._method:
            return real

        def altered(arg: object, *args: object, **kwargs: object) -> object:
            return self._answer if arg == self._when else real(arg, *args, **kwargs)

        return altered


def _candidate(name: str) -> tuple[Any, Tokenizer, EncodeProbes, Path]:
    """fastokens' tokenizer for a fixture, the reference, its probes and the file."""
    from tests.fixture_tokenizers import model_dir

    from herdsman.tokenizer.fast_backend import encode_probes, open_fast_tokenizer

    path = model_dir(name) / "tokenizer.json"
    reference = tokenizer(name, fast=False).tokenizer
    return open_fast_tokenizer(path), reference, encode_probes(reference), path


@pytest.mark.parametrize("name", TOKENIZERS)
def test_decode_parity_holds_for_the_fixtures(name: str) -> None:
    from herdsman.tokenizer.fast_backend import decodes_alike

    fast, reference, probes, path = _candidate(name)
    assert decodes_alike(fast, reference, probes, path)


def test_decode_parity_fails_on_any_difference() -> None:
    """One id decoded, one token's id or one token named otherwise, and the reference stays."""
    from herdsman.tokenizer.fast_backend import decodes_alike

    fast, reference, probes, path = _candidate("qwen3")
    im_end = reference.token_to_id("<|im_end|>")
    for method, when, answer in (
        ("decode", [im_end], "<|im_end|>?"),
        ("id_to_token", 1234, "other"),
        ("token_to_id", "<|im_end|>", im_end + 1),
    ):
        assert not decodes_alike(_Altered(fast, method, when, answer), reference, probes, path)


def test_the_reference_is_let_go_and_read_again_on_need() -> None:
    from tests.fixture_tokenizers import model_dir

    from herdsman.tokenizer import load_model_tokenizer

    tok = load_model_tokenizer(model_dir("llama3"))
    assert (tok.backend, tok.decodes_with, tok.reference) == ("fastokens", "fastokens", None)
    text = "Grüße 🙂 <|eot_id|> again"
    # What fastokens does not do (a pooling input's truncation) reads the reference again,
    # as the model uses it (tokenizer_config's BOS included).
    reference = tok.tokenizer
    assert tok.reference is reference
    assert reference.encode(text).ids == tok.encode(text, add_special_tokens=True)
    assert tok.decodes_with == "fastokens"


def test_without_fastokens_the_reference_decodes() -> None:
    from tests.fixture_tokenizers import model_dir

    from herdsman.tokenizer import load_model_tokenizer

    tok = load_model_tokenizer(model_dir("qwen3"), fast=False)
    assert (tok.backend, tok.decodes_with) == ("tokenizers", "tokenizers")
    assert tok.reference is not None


def test_a_failed_check_keeps_or_reads_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixture_tokenizers import model_dir

    from herdsman.tokenizer import loader

    monkeypatch.setattr(loader, "decodes_alike", lambda *args: False)
    tok = loader.load_model_tokenizer(model_dir("qwen3"))
    assert (tok.backend, tok.decodes_with) == ("fastokens", "tokenizers")
    assert tok.reference is not None
    monkeypatch.undo()

    # Decoding alike but encoding otherwise: the reference encodes, read again at load time
    # (not by the first request).
    monkeypatch.setattr(loader, "verified_encoder", lambda *args: None)
    tok = loader.load_model_tokenizer(model_dir("qwen3"))
    assert (tok.backend, tok.decodes_with) == ("tokenizers", "fastokens")
    assert tok.reference is not None
