"""--response-text-after-tool: a second scripted answer for prompts that end in a tool result."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from tokenizers import Tokenizer

from herdsman.sim.text_source import TextSource
from herdsman.tokenizer.chat_template import ChatTemplate

from .simproc import QWEN3, SimFactory, SimProcess, generate_request, split_responses

CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
ANSWER = "The sum is 5."
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
USER = {"role": "user", "content": "What is 2 + 3?"}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "5"}


@pytest.fixture(scope="module")
def qwen_template() -> ChatTemplate:
    config = json.loads((QWEN3 / "tokenizer_config.json").read_text())
    return ChatTemplate(config["chat_template"], {"eos_token": "<|im_end|>"})


def _prompt(
    template: ChatTemplate,
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    **extra: Any,
) -> list[int]:
    text = template.render(messages, tools=TOOLS, extra=extra)
    return tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize(
    ("messages", "after_tool"),
    [
        ([USER], False),
        ([USER, CALL, RESULT], True),
        # Two results of one parallel call: still the prompt's last message is a tool result.
        ([USER, {**CALL, "tool_calls": CALL["tool_calls"] * 2}, RESULT, RESULT], True),
        # A tool result earlier in the conversation, then the user asks again.
        ([USER, CALL, RESULT, {"role": "assistant", "content": ANSWER}, USER], False),
        # The user quotes the marker in their own message.
        ([{"role": "user", "content": "What does </tool_response> mean?"}], False),
    ],
)
@pytest.mark.parametrize("thinking", [True, False])
def test_detects_a_prompt_ending_in_a_tool_result(
    qwen_template: ChatTemplate,
    qwen_tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    after_tool: bool,
    thinking: bool,
) -> None:
    source = TextSource(qwen_tokenizer, CALL_TEXT)
    assert source.after_tool is None
    before = len(source.ids)
    source.add_after_tool(qwen_tokenizer, ANSWER)
    answer = source.after_tool
    assert answer is not None
    assert answer.start == before
    assert qwen_tokenizer.decode(source.ids[answer.start :]) == ANSWER
    assert answer.length == len(source.ids) - before

    prompt = _prompt(qwen_template, qwen_tokenizer, messages, enable_thinking=thinking)
    if not thinking:
        assert qwen_tokenizer.decode(prompt[-8:], skip_special_tokens=False).endswith(
            "<think>\n\n</think>\n\n"
        )
    assert answer.applies(prompt) is after_tool


def _answer(sim: SimProcess, request_id: str, prompt: list[int]) -> Any:
    responses = list(
        sim.stub().Generate(
            generate_request(sim.backend, request_id, prompt, max_tokens=200), timeout=20
        )
    )
    _chunks, completes = split_responses(responses)
    assert len(completes) == 1
    return completes[0]


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_engine_answers_the_tool_result_with_the_second_text(
    sim_factory: SimFactory,
    qwen_template: ChatTemplate,
    qwen_tokenizer: Tokenizer,
    backend: str,
) -> None:
    sim = sim_factory(
        "--itl-base-ms",
        "0",
        "--response-text",
        CALL_TEXT,
        "--response-text-after-tool",
        ANSWER,
        backend=backend,
    )
    first = _prompt(qwen_template, qwen_tokenizer, [USER])
    second = _prompt(qwen_template, qwen_tokenizer, [USER, CALL, RESULT])
    for turn, (prompt, text) in enumerate(
        [(first, CALL_TEXT), (second, ANSWER), (first, CALL_TEXT)]
    ):
        complete = _answer(sim, f"turn-{turn}", prompt)
        output = list(complete.output_ids)
        # The text, then EOS: a finished answer, not a length cut.
        assert complete.finish_reason == "stop"
        assert output[-1] in (151645, 151643)
        assert qwen_tokenizer.decode(output[:-1], skip_special_tokens=False) == text
        assert complete.prompt_tokens == len(prompt)


def test_after_tool_needs_response_text() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "herdsman.sim",
            "--model-path",
            str(QWEN3),
            "--port",
            "0",
            "--response-text-after-tool",
            ANSWER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--response-text-after-tool needs --response-text" in result.stderr
