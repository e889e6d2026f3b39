"""Round trips through the models' real chat templates: render an assistant turn with tool calls
(and reasoning) the way the model was trained to write it, cut out the assistant's part, parse it
and get the same calls (and reasoning) back. Also real tokenizers: the same text fed token by
token through the incremental detokenizer, as the gateway streams it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LLAMA3, QWEN3
from tests.parsers.helpers import decoded_calls, ids, one_shot_tools, stream_tools
from tests.parsers.vectors import (
    TOOLS,
    render_hermes,
    render_pythonic,
    render_qwen3_coder,
)

from herdsman.parsers import registry
from herdsman.tokenizer import ChatTemplate, ModelTokenizer, load_model_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"

USER = {"role": "user", "content": "What's the weather in Tokyo and the time in Paris?"}
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_weather", {"city": "東京", "days": 3, "metric": True}),
    ("search", {"query": 'say "hi"', "filters": {"tags": ["a", "b"], "n": None}, "limit": 2.5}),
    ("ping", {}),
]


def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def template(name: str) -> ChatTemplate:
    folder = FIXTURES / name
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    jinja = folder / "chat_template.jinja"
    source = jinja.read_text() if jinja.exists() else config["chat_template"]
    special = {
        k: _token(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    return ChatTemplate(source, special)


def tool_calls(*, string_arguments: bool) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": json.dumps(args, ensure_ascii=False) if string_arguments else args,
            },
        }
        for i, (name, args) in enumerate(CALLS)
    ]


def between(text: str, start: str, end: str | None) -> str:
    at = text.rindex(start) + len(start)
    if end is None:
        return text[at:]
    return text[at : text.index(end, at)]


def after_user(text: str, start: str) -> str:
    """What follows ``start`` after the user's message: the assistant's whole turn."""
    at = text.index(start, text.rindex(USER["content"])) + len(start)
    return text[at:]


def split_reasoning(parser: str, text: str, **kwargs: Any) -> tuple[str | None, str | None]:
    return registry.get_reasoning_parser(parser)(**kwargs).parse(text)


def assert_calls(parser: str, text: str, content: str | None) -> None:
    result = one_shot_tools(parser, text, TOOLS)
    assert decoded_calls(result) == CALLS
    assert result.content == content
    # And streamed a character at a time.
    streamed, _ = stream_tools(parser, list(text), TOOLS)
    assert streamed == result


@pytest.mark.parametrize("folder", ["qwen3", "qwen2_5"])
def test_qwen_hermes_round_trip(folder: str) -> None:
    message = {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": tool_calls(string_arguments=False),
    }
    rendered = template(folder).render([USER, message], tools=TOOLS, add_generation_prompt=False)
    assistant = between(rendered, "<|im_start|>assistant\n", "<|im_end|>")
    assert "<tool_call>" in assistant
    reasoning, content = split_reasoning("qwen3", assistant)
    assert reasoning is None
    assert content is not None
    assert_calls("hermes", content, "Let me look.")


def test_qwen3_reasoning_and_calls_round_trip() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "The user wants two things.\nCall both tools.",
        "tool_calls": tool_calls(string_arguments=False),
    }
    rendered = template("qwen3").render([USER, message], tools=TOOLS, add_generation_prompt=False)
    assistant = between(rendered, "<|im_start|>assistant\n", "<|im_end|>")
    reasoning, content = split_reasoning("qwen3", assistant)
    assert reasoning == "The user wants two things.\nCall both tools."
    assert content is not None
    assert_calls("hermes", content, None)


def test_qwen3_generation_prompt_thinking_off_is_content() -> None:
    prompt = template("qwen3").render([USER], extra={"enable_thinking": False})
    parser = registry.get_reasoning_parser("qwen3")
    assert not parser.prompt_in_reasoning(prompt)
    assert parser(thinking=False).parse("Sunny.") == (None, "Sunny.")


@pytest.mark.parametrize("count", [1, 2, 3])
def test_deepseek_v3_round_trip(count: int) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": tool_calls(string_arguments=True)[:count],
    }
    rendered = template("deepseek_v3").render([USER, message], add_generation_prompt=False)
    # This template closes the section only after a second call, and then after every later
    # one; EOS never reaches the parser (the gateway stops on it).
    assistant = between(rendered, "<｜Assistant｜>", None).replace("<｜end▁of▁sentence｜>", "")
    result = one_shot_tools("deepseek_v3", assistant)
    assert decoded_calls(result) == CALLS[:count]
    assert result.content is None


def test_deepseek_v31_round_trip() -> None:
    message = {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": tool_calls(string_arguments=True),
    }
    rendered = template("deepseek_v3_1").render([USER, message], add_generation_prompt=False)
    # Non-thinking mode: the template closes reasoning right after the assistant tag.
    assistant = between(rendered, "<｜Assistant｜></think>", "<｜end▁of▁sentence｜>")
    assert split_reasoning("deepseek_v3", assistant, thinking=False) == (None, assistant)
    assert_calls("deepseek_v31", assistant, "Checking.")


@pytest.mark.parametrize("thinking", [True, False])
def test_deepseek_v31_generation_prompt(thinking: bool) -> None:
    prompt = template("deepseek_v3_1").render([USER], extra={"thinking": thinking})
    parser = registry.get_reasoning_parser("deepseek_v31")
    assert parser.prompt_in_reasoning(prompt) is thinking
    output = "I should check.</think>Sunny." if thinking else "Sunny."
    expected = ("I should check.", "Sunny.") if thinking else (None, "Sunny.")
    assert parser(thinking=thinking).parse(output) == expected
    assert parser(prompt_in_reasoning=parser.prompt_in_reasoning(prompt)).parse(output) == expected


def test_glm45_round_trip() -> None:
    calls = tool_calls(string_arguments=False)
    message = {
        "role": "assistant",
        "content": "Let me look.",
        "reasoning_content": "Two lookups needed.",
        "tool_calls": calls,
    }
    rendered = template("glm4_5").render([USER, message], tools=TOOLS, add_generation_prompt=False)
    assistant = between(rendered, "<|assistant|>", None)
    reasoning, content = split_reasoning("glm45", assistant)
    assert reasoning == "Two lookups needed."
    assert content is not None
    assert_calls("glm45", content, "Let me look.")


def test_glm45_string_that_looks_like_a_number_needs_the_schema() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "tag", "arguments": {"code": "42"}}}
        ],
    }
    rendered = template("glm4_5").render([USER, message], tools=TOOLS, add_generation_prompt=False)
    _, content = split_reasoning("glm45", between(rendered, "<|assistant|>", None))
    assert content is not None
    typed = one_shot_tools("glm45", content, TOOLS)
    untyped = one_shot_tools("glm45", content)
    assert decoded_calls(typed) == [("tag", {"code": "42"})]
    assert decoded_calls(untyped) == [("tag", {"code": 42})]


@pytest.mark.parametrize("index", range(len(CALLS)))
def test_gpt_oss_round_trip(index: int) -> None:
    name, args = CALLS[index]
    message = {
        "role": "assistant",
        "thinking": "Need a tool.",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}],
    }
    rendered = template("gpt_oss").render([USER, message], tools=TOOLS, add_generation_prompt=False)
    assistant = after_user(rendered, "<|end|><|start|>assistant")
    reasoning, content = split_reasoning("openai_gptoss", assistant)
    assert reasoning == "Need a tool."
    assert content is not None
    result = one_shot_tools("openai", content)
    assert decoded_calls(result) == [(name, args)]
    assert result.content is None
    # Without the reasoning parser in front, the tool parser still finds the call.
    assert decoded_calls(one_shot_tools("openai", assistant)) == [(name, args)]


def test_gpt_oss_final_answer_round_trip() -> None:
    message = {"role": "assistant", "thinking": "Greet back.", "content": "Hello! 👋"}
    rendered = template("gpt_oss").render([USER, message], add_generation_prompt=False)
    assistant = after_user(rendered, "<|end|><|start|>assistant")
    assert split_reasoning("openai_gptoss", assistant) == ("Greet back.", "Hello! 👋")


@functools.cache
def _tokenizer(model: Path) -> ModelTokenizer:
    return load_model_tokenizer(model, fast=False)


def _detokenized_deltas(model: Path, text: str) -> list[str]:
    tokenizer = _tokenizer(model)
    detok = tokenizer.detokenizer(skip_special_tokens=False)
    deltas = [detok.push([token]) for token in tokenizer.encode(text, add_special_tokens=False)]
    assert "".join(deltas) == text
    return deltas


@pytest.mark.parametrize(
    ("model", "parser", "render"),
    [
        (QWEN3, "hermes", render_hermes),
        (QWEN3, "qwen3_coder", render_qwen3_coder),
        (LLAMA3, "pythonic", render_pythonic),
    ],
)
def test_real_token_stream(model: Path, parser: str, render: Any) -> None:
    text = render(CALLS)
    deltas = _detokenized_deltas(model, text)
    streamed, _ = stream_tools(parser, deltas, TOOLS)
    assert decoded_calls(streamed) == CALLS
    assert streamed == registry.get_tool_call_parser(parser)(TOOLS, id_factory=ids).parse(text)


def test_real_token_stream_reasoning() -> None:
    text = "<think>\n考虑 a<b 和 </thin k>\n</think>\n\nAnswer: 42 🌧"
    deltas = _detokenized_deltas(QWEN3, text)
    parser = registry.get_reasoning_parser("qwen3")()
    parts = [parser.feed(d) for d in deltas] + [parser.finish()]
    assert "".join(r for r, _ in parts) == "考虑 a<b 和 </thin k>"
    assert "".join(c for _, c in parts) == "Answer: 42 🌧"
