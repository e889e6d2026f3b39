"""POST /parse/reasoning and /parse/function_call handlers, called directly."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from tests.parsers.vectors import TOOLS

from herdsman.api.errors import APIError
from herdsman.api.parse import parse_function_call, parse_reasoning
from herdsman.http import Request
from herdsman.pipeline.context import ServingContext
from herdsman.routing import WorkerRegistry


def _model(**fields: Any) -> SimpleNamespace:
    """A served model as the handlers read it: no parsers unless the test sets one."""
    return SimpleNamespace(**{"reasoning_parser": None, "tool_call_parser": None, **fields})


def _ctx(**model: Any) -> ServingContext:
    """A serving context with one model (the handlers' default when a request names none)."""
    return ServingContext(models={"m": _model(**model)}, registry=WorkerRegistry())  # type: ignore[dict-item]


def _call(handler: Any, payload: object, **model: Any) -> dict[str, Any]:
    ctx = _ctx(**model)
    request = Request("POST", "/parse", "", {}, json.dumps(payload).encode())
    response = asyncio.run(handler(ctx, request))
    assert response.status == 200
    return json.loads(response.body)


def test_parse_reasoning() -> None:
    body = _call(parse_reasoning, {"text": "<think>a</think>b", "reasoning_parser": "qwen3"})
    assert body == {"text": "b", "reasoning_text": "a"}


def test_parse_reasoning_respects_thinking_off() -> None:
    body = _call(
        parse_reasoning,
        {
            "text": "plain",
            "reasoning_parser": "deepseek_v31",
            "chat_template_kwargs": {"thinking": False},
        },
    )
    assert body == {"text": "plain", "reasoning_text": ""}


def test_parse_reasoning_uses_the_server_parser() -> None:
    body = _call(parse_reasoning, {"text": "r</think>c"}, reasoning_parser="deepseek_r1")
    assert body == {"text": "c", "reasoning_text": "r"}


def test_parse_function_call() -> None:
    text = (
        "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
    )
    body = _call(
        parse_function_call, {"text": text, "tool_call_parser": "qwen3_coder", "tools": TOOLS}
    )
    assert body["normal_text"] == "Sure."
    assert body["calls"] == [
        {"tool_index": 0, "name": "get_weather", "parameters": '{"city": "Oslo", "days": 2}'}
    ]
    (call,) = body["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_") and len(call["id"]) == 5 + 24
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}


@pytest.mark.parametrize(
    ("handler", "payload", "param"),
    [
        (parse_reasoning, {"text": "x", "reasoning_parser": "nope"}, "reasoning_parser"),
        (parse_reasoning, {"text": "x"}, "reasoning_parser"),
        (parse_function_call, {"text": "x", "tool_call_parser": "nope"}, "tool_call_parser"),
        (parse_function_call, {"text": "x"}, "tool_call_parser"),
        (parse_function_call, {"tool_call_parser": "hermes"}, None),
    ],
)
def test_bad_requests(handler: Any, payload: object, param: str | None) -> None:
    ctx = _ctx()
    request = Request("POST", "/parse", "", {}, json.dumps(payload).encode())
    with pytest.raises(APIError) as info:
        asyncio.run(handler(ctx, request))
    assert info.value.status == 400
    assert info.value.param == param
