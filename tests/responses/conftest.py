"""Gateways in front of engine-sims with a store, for the Responses and Conversations tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import QWEN3, Proc, start_gateway, start_sim

MODEL = "qwen3"
# What the scripted engine answers: reasoning, text, then two tool calls (Qwen3's format).
SCRIPT = (
    "<think>\nThe user wants the weather in two cities.\n</think>\n\n"
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "C"}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
)
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def fast_sim(*extra: str) -> Proc:
    return start_sim(
        QWEN3,
        "vllm",
        "--ttft-base-ms",
        "1",
        "--prefill-ms-per-1k",
        "0",
        "--itl-base-ms",
        "1",
        *extra,
    )


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'responses.db'}"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = fast_sim()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def base_url(sim: Proc, store_dir: Path) -> Iterator[str]:
    gateway = start_gateway(sim.address, extra=("--storage", sqlite_url(store_dir)))
    yield f"http://{gateway.address}"
    gateway.stop()


@pytest.fixture(scope="module")
def scripted_url(store_dir: Path) -> Iterator[str]:
    """A gateway whose engine answers ``SCRIPT`` to everything."""
    sim = fast_sim("--response-text", SCRIPT)
    gateway = start_gateway(
        sim.address,
        extra=("--model-path", str(QWEN3), "--storage", sqlite_url(store_dir)),
    )
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def sse(url: str, body: dict, timeout: float = 60) -> list[dict]:
    """The events of a streamed Responses call (``event:`` lines checked against ``type``)."""
    events: list[dict] = []
    with httpx.stream("POST", url, json=body, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        events = parse_sse(response.iter_lines())
    return events


def parse_sse(lines: Iterator[str]) -> list[dict]:
    events: list[dict] = []
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            assert event["type"] == name
            events.append(event)
    return events
