"""Reasoning and tool calls parsed out of real engine output, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL, stream_sse

ANSWER = (
    "<think>\nThe user wants the weather in two cities.\n</think>\n\n"
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "C"}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        },
    }
]
MESSAGES = [{"role": "user", "content": "Weather in Zürich and Tokyo?"}]


@pytest.fixture(scope="module")
def scripted(backend: str) -> Iterator[str]:
    sim = start_sim(QWEN3, backend, "--itl-base-ms", "0", "--response-text", ANSWER)
    gateway = start_gateway(sim.address, extra=("--model-path", str(QWEN3)))
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def _calls(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


EXPECTED_CALLS = [
    ("get_weather", {"city": "Zürich", "unit": "C"}),
    ("get_weather", {"city": "東京"}),
]


def test_reasoning_and_tool_calls_non_streaming(scripted: str) -> None:
    data = httpx.post(
        f"{scripted}/v1/chat/completions",
        timeout=30,
        json={"model": MODEL, "messages": MESSAGES, "tools": TOOLS},
    ).json()
    [choice] = data["choices"]
    message = choice["message"]
    assert message["reasoning_content"].strip() == "The user wants the weather in two cities."
    assert message["content"].strip() == "Let me check both."
    assert _calls(message["tool_calls"]) == EXPECTED_CALLS
    assert all(c["id"] and c["type"] == "function" for c in message["tool_calls"])
    assert choice["finish_reason"] == "tool_calls"


def test_reasoning_and_tool_calls_streaming_equal_non_streaming(scripted: str) -> None:
    events = stream_sse(
        f"{scripted}/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "stream": True},
        timeout=30,
    )
    reasoning = "".join(
        e["choices"][0]["delta"].get("reasoning_content") or "" for e in events if e["choices"]
    )
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    calls: dict[int, dict] = {}
    for e in events:
        for delta in (e["choices"][0]["delta"].get("tool_calls") or []) if e["choices"] else []:
            call = calls.setdefault(delta["index"], {"function": {"name": "", "arguments": ""}})
            if "id" in delta:
                assert "id" not in call, "a call's id comes once, in its first delta"
                call["id"] = delta["id"]
                call["function"]["name"] = delta["function"]["name"]
            call["function"]["arguments"] += delta["function"].get("arguments", "")
    assert reasoning.strip() == "The user wants the weather in two cities."
    assert content.strip() == "Let me check both."
    assert "<tool_call>" not in content and "<think>" not in content
    assert _calls([calls[i] for i in sorted(calls)]) == EXPECTED_CALLS
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_no_tools_no_tool_parsing_and_separate_reasoning_off(scripted: str) -> None:
    data = httpx.post(
        f"{scripted}/v1/chat/completions",
        timeout=30,
        json={"model": MODEL, "messages": MESSAGES, "separate_reasoning": False},
    ).json()
    message = data["choices"][0]["message"]
    assert "<think>" in message["content"] and "<tool_call>" in message["content"]
    assert message.get("tool_calls") is None
    assert data["choices"][0]["finish_reason"] == "stop"


def test_openai_client_sees_tool_calls(scripted: str) -> None:
    client = openai.OpenAI(base_url=f"{scripted}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    calls = reply.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS
    assert reply.choices[0].finish_reason == "tool_calls"


def test_standalone_parse_endpoints(scripted: str) -> None:
    reasoning = httpx.post(f"{scripted}/parse/reasoning", json={"text": ANSWER}).json()
    assert reasoning["reasoning_text"].strip() == "The user wants the weather in two cities."
    calls = httpx.post(
        f"{scripted}/parse/function_call",
        json={"text": ANSWER.split("</think>")[1], "tools": TOOLS},
    ).json()
    assert _calls(calls["tool_calls"]) == EXPECTED_CALLS
    assert (
        httpx.post(
            f"{scripted}/parse/reasoning", json={"text": "x", "reasoning_parser": "nope"}
        ).status_code
        == 400
    )
