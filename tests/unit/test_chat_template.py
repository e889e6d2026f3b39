from __future__ import annotations

import pytest
from tests.conftest import LLAMA3, QWEN3

from herdsman.tokenizer import ChatTemplateError, load_model_tokenizer


def test_qwen3_template_with_generation_prompt() -> None:
    tok = load_model_tokenizer(QWEN3)
    assert tok.chat_template is not None
    text = tok.chat_template.render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert (
        text
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen3_enable_thinking_false_adds_empty_think() -> None:
    tok = load_model_tokenizer(QWEN3)
    assert tok.chat_template is not None
    text = tok.chat_template.render(
        [{"role": "user", "content": "U"}], extra={"enable_thinking": False}
    )
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_llama3_template_uses_bos_token() -> None:
    tok = load_model_tokenizer(LLAMA3)
    assert tok.chat_template is not None
    text = tok.chat_template.render([{"role": "user", "content": " hi "}])
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.eos_token_ids == (128001, 128009)


def test_raise_exception_becomes_template_error() -> None:
    tok = load_model_tokenizer(QWEN3)
    from herdsman.tokenizer import ChatTemplate

    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", tok.special_tokens)
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "x"}])


def test_template_cannot_reach_python_internals() -> None:
    from herdsman.tokenizer import ChatTemplate

    template = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])
