"""Gateways in front of engine-sims for the Anthropic Messages API tests, and SDK helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from tests.conftest import MODELS, QWEN3, Proc, start_gateway, start_sim
from tests.responses.conftest import parse_sse

MODEL = "qwen3"
VL_MODEL = "qwen2_5_vl"
VL_CONTEXT = 128
# What the scripted engine answers: reasoning, text, then two tool calls (Qwen3's format).
SCRIPT = (
    "<think>\nThe user wants the weather in two cities.\n</think>\n\n"
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "C"}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
)
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}
TOOLS = [
    {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA}
]
# The same tool as chat completions take it.
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER_SCHEMA,
        },
    }
]


def fast_sim(model: Path = QWEN3, *extra: str) -> Proc:
    return start_sim(
        model,
        "vllm",
        "--ttft-base-ms",
        "1",
        "--prefill-ms-per-1k",
        "0",
        "--itl-base-ms",
        "1",
        *extra,
    )


def gateway_for(sim: Proc, *extra: str) -> Proc:
    # One gateway process: these tests need no more, and CI runs beside them.
    return start_gateway(sim.address, extra=("--workers", "1", *extra))


@pytest.fixture(scope="module")
def abort_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("messages") / "aborts.log"


@pytest.fixture(scope="module")
def base_url(abort_log: Path) -> Iterator[str]:
    """A gateway before a sim generating corpus text (5 ms a token, so that a long answer is
    still running when a client leaves it) that logs the Aborts it receives."""
    sim = fast_sim(QWEN3, "--itl-base-ms", "5", "--abort-log", str(abort_log))
    gateway = gateway_for(sim)
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    """A gateway whose engine answers ``SCRIPT`` to everything."""
    sim = fast_sim(QWEN3, "--response-text", SCRIPT)
    gateway = gateway_for(sim, "--model-path", str(QWEN3))
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


@pytest.fixture(scope="module")
def vl_url() -> Iterator[str]:
    """A gateway before a vision model (Qwen2.5-VL: tokenizer and processor from the worker)
    whose context window is 128 tokens, so that an answer can run into it."""
    sim = fast_sim(MODELS / "qwen2_5_vl", "--max-model-len", str(VL_CONTEXT))
    gateway = gateway_for(sim)
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def client(base_url: str) -> anthropic.Anthropic:
    # The SDK retries 429/5xx by default: a test sees the first answer.
    return anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0)


def chat(base_url: str, messages: list[dict], model: str = MODEL, **extra: object) -> dict:
    """A chat completion of ``messages`` (the reference a message is compared with)."""
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": model, "messages": messages, **extra},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def count(base_url: str, body: dict) -> int:
    response = httpx.post(f"{base_url}/v1/messages/count_tokens", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["input_tokens"]


def sse(base_url: str, body: dict) -> list[dict]:
    """The events of a streamed message; each ``event:`` line is checked against its type."""
    with httpx.stream("POST", f"{base_url}/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.iter_lines())
