"""MCP tools in /v1/responses: the gateway lists the server's tools, runs the model's calls on
a real MCP server (the mcp SDK's, streamable HTTP), feeds the results back and generates again."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import QWEN3, start_gateway
from tests.mcp.test_mcp_pool import APP, HttpServer, start_http_server
from tests.responses.conftest import MODEL, fast_sim, sqlite_url, sse
from tests.responses.test_responses_api import client

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
ANSWER = "The sum is 5."


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_http_server("streamable_http", tmp_path_factory.mktemp("mcp"))
    yield server
    server.stop()


def _gateway(directory: Path, *sim_args: str, private: bool = True) -> tuple[str, object, object]:
    sim = fast_sim("--response-text", CALL, *sim_args)
    extra = ["--model-path", str(QWEN3), "--storage", sqlite_url(directory)]
    if private:
        extra.append("--allow-private-mcp-urls")
    gateway = start_gateway(sim.address, extra=tuple(extra))
    return f"http://{gateway.address}", gateway, sim


@pytest.fixture(scope="module")
def loop_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine calls ``add`` until it sees a tool result, then answers ANSWER."""
    url, gateway, sim = _gateway(
        tmp_path_factory.mktemp("loop"), "--response-text-after-tool", ANSWER
    )
    yield url
    gateway.stop()  # type: ignore[attr-defined]
    sim.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def always_calls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine calls ``add`` every time."""
    url, gateway, sim = _gateway(tmp_path_factory.mktemp("always"))
    yield url
    gateway.stop()  # type: ignore[attr-defined]
    sim.stop()  # type: ignore[attr-defined]


def mcp_tool(server: HttpServer, **extra: object) -> dict:
    return {
        "type": "mcp",
        "server_label": "calc",
        "server_url": server.url,
        "require_approval": "never",
        **extra,
    }


def test_the_gateway_runs_the_call_and_the_model_answers(
    loop_url: str, mcp_server: HttpServer
) -> None:
    response = client(loop_url).responses.create(
        model=MODEL, input="What is 2 + 3?", tools=[mcp_tool(mcp_server)]
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    listing, call, message = response.output
    assert "add" in {t.name for t in listing.tools}
    assert call.name == "add" and json.loads(call.arguments) == {"a": 2, "b": 3}
    assert call.output == "5" and call.error is None
    assert message.content[0].text == ANSWER
    assert response.status == "completed"
    # Usage covers both turns: the second prompt holds the first and the tool's result.
    single = client(loop_url).responses.create(model=MODEL, input="What is 2 + 3?")
    assert response.usage.input_tokens > 2 * single.usage.input_tokens - 5
    log = mcp_server.log.read_text()
    assert "tools/call add" in log


def test_streamed_mcp_events(loop_url: str, mcp_server: HttpServer) -> None:
    events = sse(
        f"{loop_url}/v1/responses",
        {"model": MODEL, "input": "2 + 3?", "tools": [mcp_tool(mcp_server)], "stream": True},
    )
    types = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    expected_order = [
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_text.done",
        "response.completed",
    ]
    positions = [types.index(t) for t in expected_order]
    assert positions == sorted(positions)
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.mcp_call_arguments.delta"
    )
    assert json.loads(arguments) == {"a": 2, "b": 3}
    final = events[-1]["response"]["output"]
    assert [i["type"] for i in final] == ["mcp_list_tools", "mcp_call", "message"]


def test_approval_requested_then_granted(loop_url: str, mcp_server: HttpServer) -> None:
    sdk = client(loop_url)
    tool = mcp_tool(mcp_server, require_approval="always")
    first = sdk.responses.create(model=MODEL, input="2 + 3?", tools=[tool])
    kinds = [item.type for item in first.output]
    assert kinds == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert request.name == "add" and json.loads(request.arguments) == {"a": 2, "b": 3}
    second = sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[tool],
        input=[
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
        ],
    )
    kinds = [item.type for item in second.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    assert second.output[1].output == "5"
    assert second.output[2].content[0].text == ANSWER


def test_max_tool_calls_ends_the_loop_incomplete(
    always_calls_url: str, mcp_server: HttpServer
) -> None:
    response = client(always_calls_url).responses.create(
        model=MODEL, input="2 + 3?", tools=[mcp_tool(mcp_server)], max_tool_calls=2
    )
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert [c.output for c in calls[:2]] == ["5", "5"]
    assert calls[2].error is not None and "max_tool_calls" in calls[2].error
    assert response.status == "incomplete"
    assert response.incomplete_details is not None


def test_a_failing_server_is_a_tool_error_not_a_gateway_error(
    loop_url: str, mcp_server: HttpServer
) -> None:
    # A server that cannot be reached: its listing fails, the model answers without its tools.
    dead = {
        "type": "mcp",
        "server_label": "dead",
        "server_url": "http://127.0.0.1:9/mcp",
        "require_approval": "never",
    }
    response = client(loop_url).responses.create(model=MODEL, input="2 + 3?", tools=[dead])
    listing = response.output[0]
    assert listing.type == "mcp_list_tools" and listing.error
    assert response.status == "completed"


def test_private_urls_are_refused_unless_allowed(tmp_path: Path, mcp_server: HttpServer) -> None:
    url, gateway, sim = _gateway(tmp_path, private=False)
    try:
        reply = httpx.post(
            f"{url}/v1/responses",
            json={"model": MODEL, "input": "x", "tools": [mcp_tool(mcp_server)]},
            timeout=60,
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "tools"
        with pytest.raises(openai.BadRequestError):
            client(url).responses.create(
                model=MODEL, input="x", tools=[{"type": "mcp", "server_label": "nope"}]
            )
    finally:
        gateway.stop()  # type: ignore[attr-defined]
        sim.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_http_server("sse", tmp_path_factory.mktemp("mcp-sse"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def configured_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose --mcp-config names a stdio server (a process the gateway starts)."""
    directory = tmp_path_factory.mktemp("configured")
    config = directory / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "servers": {
                    "local": {
                        "transport": "stdio",
                        "command": sys.executable,
                        "args": [str(APP), "stdio"],
                    }
                }
            }
        )
    )
    sim = fast_sim("--response-text", CALL, "--response-text-after-tool", ANSWER)
    gateway = start_gateway(
        sim.address,
        extra=(
            "--model-path",
            str(QWEN3),
            "--storage",
            sqlite_url(directory),
            "--mcp-config",
            str(config),
        ),
    )
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def _loop_output(url: str, tool: dict) -> list:
    response = client(url).responses.create(model=MODEL, input="What is 2 + 3?", tools=[tool])
    assert response.status == "completed"
    return response.output


def test_the_loop_over_sse(loop_url: str, sse_server: HttpServer) -> None:
    output = _loop_output(loop_url, mcp_tool(sse_server))
    assert [i.type for i in output] == ["mcp_list_tools", "mcp_call", "message"]
    assert output[1].output == "5" and output[2].content[0].text == ANSWER


def test_the_loop_over_a_configured_stdio_server(configured_url: str) -> None:
    tool = {"type": "mcp", "server_label": "local", "require_approval": "never"}
    output = _loop_output(configured_url, tool)
    assert [i.type for i in output] == ["mcp_list_tools", "mcp_call", "message"]
    assert output[1].server_label == "local" and output[1].output == "5"
    # allowed_tools narrows what the operator allows: without add, the model's call is not run.
    narrowed = {**tool, "allowed_tools": ["echo"]}
    response = client(configured_url).responses.create(
        model=MODEL, input="What is 2 + 3?", tools=[narrowed]
    )
    assert [t.name for t in response.output[0].tools] == ["echo"]
    assert not any(i.type == "mcp_call" for i in response.output)


def test_max_output_tokens_bounds_the_whole_loop(loop_url: str, mcp_server: HttpServer) -> None:
    sdk = client(loop_url)
    whole = sdk.responses.create(model=MODEL, input="2 + 3?", tools=[mcp_tool(mcp_server)])
    assert whole.status == "completed"
    first_turn = whole.usage.output_tokens - 5  # the answer is more than 2 tokens
    budget = first_turn + 2
    capped = sdk.responses.create(
        model=MODEL, input="2 + 3?", tools=[mcp_tool(mcp_server)], max_output_tokens=budget
    )
    assert capped.status == "incomplete"
    assert capped.usage.output_tokens <= budget
    # Every item is finished, the call too.
    assert [i.type for i in capped.output][:2] == ["mcp_list_tools", "mcp_call"]
    assert capped.output[1].status in ("completed", "failed")
