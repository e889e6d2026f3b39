"""tool_choice and response_format: engine constraints on both protos, output read back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL, sse_events

from herdsman.engines import EngineRequest, SamplingParams
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.transport import NativeTransport
from herdsman.engines.vllm import VllmEngine
from herdsman.pipeline.constraints import response_format_constraint, tool_choice_constraint

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris and the time?"}]
REQUIRED_OUTPUT = json.dumps(
    [
        {"name": "get_weather", "parameters": {"city": "Paris"}},
        {"name": "get_time", "parameters": {}},
    ]
)


def test_required_schema_lists_every_tool() -> None:
    (kind, value), named = tool_choice_constraint(TOOLS, "required")
    schema = json.loads(value)
    assert kind == "json_schema" and named is None
    names = [o["properties"]["name"]["const"] for o in schema["items"]["anyOf"]]
    assert names == ["get_weather", "get_time"] and schema["minItems"] == 1


def test_named_tool_is_constrained_to_its_parameters() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    (kind, value), named = tool_choice_constraint(TOOLS, choice)
    assert (kind, named) == ("json_schema", "get_weather")
    assert json.loads(value)["required"] == ["city"]


def test_response_formats() -> None:
    assert response_format_constraint({"type": "json_object"}, {}) == ("json_object", "")
    kind, value = response_format_constraint(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}, {}
    )
    assert (kind, json.loads(value)) == ("json_schema", {"type": "integer"})
    assert response_format_constraint(None, {"guided_regex": "[a-z]+"}) == ("regex", "[a-z]+")
    assert response_format_constraint(None, {"ebnf": "root ::= 'a'"}) == ("grammar", "root ::= 'a'")
    assert response_format_constraint({"type": "text"}, {}) is None


@pytest.mark.parametrize(
    "kind,value",
    [
        ("json_schema", '{"type":"integer"}'),
        ("regex", "[0-9]+"),
        ("grammar", "root ::= 'a'"),
        ("json_object", ""),
    ],
)
def test_constraints_reach_each_proto(kind: str, value: str) -> None:
    request = EngineRequest(
        request_id="r", input_ids=[1, 2], sampling=SamplingParams(constraint=(kind, value))
    )
    transport = NativeTransport("127.0.0.1:1")  # connects lazily: never, here
    vllm = VllmEngine("x", transport)._generate_request(request).sampling_params
    sglang = SglangScheduler("x", transport)._generate_request(request).sampling_params
    if kind == "json_object":
        assert vllm.json_object is True
        assert sglang.json_schema == '{"type": "object"}'
    else:
        assert getattr(vllm, kind) == value
        assert getattr(sglang, "ebnf_grammar" if kind == "grammar" else kind) == value
        assert vllm.WhichOneof("constraint") == kind


@pytest.fixture(scope="module")
def required_gateway(backend: str) -> Iterator[str]:
    sim = start_sim(QWEN3, backend, "--itl-base-ms", "0", "--response-text", REQUIRED_OUTPUT)
    gateway = start_gateway(sim.address, extra=("--model-path", str(QWEN3)))
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def test_required_tool_choice_output_becomes_tool_calls(required_gateway: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required"}
    data = httpx.post(f"{required_gateway}/v1/chat/completions", json=body, timeout=30).json()
    calls = data["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    with httpx.stream(
        "POST", f"{required_gateway}/v1/chat/completions", timeout=30, json={**body, "stream": True}
    ) as response:
        events = sse_events(response)
    streamed = [
        d for e in events if e["choices"] for d in e["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert [d["function"]["name"] for d in streamed if "id" in d] == ["get_weather", "get_time"]


def test_bad_tool_choice_is_400(required_gateway: str) -> None:
    url = f"{required_gateway}/v1/chat/completions"
    named_missing = {"type": "function", "function": {"name": "nope"}}
    for choice in (named_missing, "sometimes"):
        body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "tool_choice": choice}
        assert httpx.post(url, json=body).status_code == 400
    assert (
        httpx.post(
            url, json={"model": MODEL, "messages": MESSAGES, "tool_choice": "required"}
        ).status_code
        == 400
    )
