"""MCP servers in /v1/messages (Anthropic's MCP connector, through the anthropic SDK's beta
client): the gateway lists a real MCP server's tools (the mcp SDK's, streamable HTTP), runs the
model's calls, adds their results as ``mcp_tool_result`` blocks and generates again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta import BetaMCPToolResultBlock, BetaMCPToolUseBlock, BetaTextBlock
from tests.conftest import QWEN3, Proc
from tests.mcp.test_mcp_pool import HttpServer, start_http_server
from tests.messages.conftest import MODEL, client, count, fast_sim, gateway_for, sse

from herdsman.api.messages.convert import chat_messages
from herdsman.api.messages.stream import MessageBuilder
from herdsman.pipeline.errors import InvalidRequest
from herdsman.pipeline.parsing import ParsedDelta

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
CALL_FAIL = '<tool_call>\n{"name": "fail", "arguments": {}}\n</tool_call>'
ANSWER = "The sum is 5."
QUESTION = "What is 2 + 3?"
BETA = "mcp-client-2025-04-04"


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_http_server("streamable_http", tmp_path_factory.mktemp("mcp"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mcp_config(mcp_server: HttpServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An --mcp-config naming the test server ``calc`` (trusted: no SSRF checks)."""
    path = tmp_path_factory.mktemp("config") / "mcp.json"
    servers = {"calc": {"transport": "streamable_http", "url": mcp_server.url}}
    path.write_text(json.dumps({"servers": servers}))
    return path


def _gateway(mcp_config: Path, *sim_args: str, private: bool) -> tuple[str, Proc, Proc]:
    sim = fast_sim(QWEN3, *sim_args)
    extra = ["--model-path", str(QWEN3), "--mcp-config", str(mcp_config)]
    if private:
        extra.append("--allow-private-mcp-urls")
    gateway = gateway_for(sim, *extra)
    return f"http://{gateway.address}", gateway, sim


@pytest.fixture(scope="module")
def loop_url(mcp_config: Path) -> Iterator[str]:
    """The engine calls ``add`` until it sees a tool result, then answers ANSWER; request-named
    servers may be private (the test server is on 127.0.0.1)."""
    url, gateway, sim = _gateway(
        mcp_config, "--response-text", CALL, "--response-text-after-tool", ANSWER, private=True
    )
    yield url
    gateway.stop()
    sim.stop()


@pytest.fixture(scope="module")
def failing_url(mcp_config: Path) -> Iterator[str]:
    """The engine calls ``fail`` every time; request-named private servers are refused, so the
    test server is reached by its --mcp-config name."""
    url, gateway, sim = _gateway(mcp_config, "--response-text", CALL_FAIL, private=False)
    yield url
    gateway.stop()
    sim.stop()


def calc(server: HttpServer, **extra: Any) -> dict[str, Any]:
    return {"type": "url", "url": server.url, "name": "calc", **extra}


def create(base_url: str, servers: list[dict[str, Any]], **extra: Any) -> Any:
    return client(base_url).beta.messages.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        mcp_servers=servers,  # type: ignore[arg-type]  # a name-only server is an extension
        betas=[BETA],
        **{"max_tokens": 200, **extra},
    )


def test_the_gateway_runs_the_call_and_the_model_answers(
    loop_url: str, mcp_server: HttpServer
) -> None:
    message = create(loop_url, [calc(mcp_server)])
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    use, result, text = message.content
    assert isinstance(use, BetaMCPToolUseBlock) and isinstance(result, BetaMCPToolResultBlock)
    assert use.id.startswith("mcptoolu_") and use.name == "add" and use.server_name == "calc"
    assert use.input == {"a": 2, "b": 3}
    assert result.tool_use_id == use.id and result.is_error is False
    assert isinstance(result.content, list) and [c.text for c in result.content] == ["5"]
    assert isinstance(text, BetaTextBlock) and text.text == ANSWER
    assert message.stop_reason == "end_turn"
    # Usage sums both turns: the second prompt holds the first, the call and its result.
    plain = client(loop_url).messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": QUESTION}]
    )
    assert message.usage.input_tokens > 2 * plain.usage.input_tokens
    assert message.usage.output_tokens > len(ANSWER.split())
    assert "tools/call add" in mcp_server.log.read_text()


def test_streamed_blocks_and_the_final_message(loop_url: str, mcp_server: HttpServer) -> None:
    events = sse(
        loop_url,
        {
            "model": MODEL,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": QUESTION}],
            "mcp_servers": [calc(mcp_server)],
            "stream": True,
        },
    )
    assert [e["type"] for e in events[:2]] == ["message_start", "ping"]
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    blocks: list[dict[str, Any]] = []
    deltas: dict[int, list[dict[str, Any]]] = {}
    open_index: int | None = None
    for event in events[2:-2]:
        if event["type"] == "ping":
            continue  # sent while a call runs long: never inside an open block's deltas
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == len(blocks)
            open_index = event["index"]
            blocks.append(event["content_block"])
            deltas[open_index] = []
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
            deltas[open_index].append(event["delta"])
        else:
            assert event["type"] == "content_block_stop" and event["index"] == open_index
            open_index = None
    assert [b["type"] for b in blocks] == ["mcp_tool_use", "mcp_tool_result", "text"]
    use, result, _text = blocks
    assert use["input"] == {} and use["server_name"] == "calc"
    assert {d["type"] for d in deltas[0]} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in deltas[0])) == {"a": 2, "b": 3}
    # The result comes whole in its start event.
    assert deltas[1] == [] and result["tool_use_id"] == use["id"]
    assert result["content"] == [{"type": "text", "text": "5"}] and not result["is_error"]
    assert "".join(d["text"] for d in deltas[2]) == ANSWER

    sdk = client(loop_url)
    with sdk.beta.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": QUESTION}],
        mcp_servers=[calc(mcp_server)],  # type: ignore[list-item]
        betas=[BETA],
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    use_block, result_block, text_block = final.content
    assert isinstance(use_block, BetaMCPToolUseBlock) and use_block.input == {"a": 2, "b": 3}
    assert isinstance(result_block, BetaMCPToolResultBlock) and not result_block.is_error
    assert isinstance(text_block, BetaTextBlock) and text_block.text == ANSWER
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_mcp_blocks_sent_back_render_as_tool_calls_and_results(
    loop_url: str, mcp_server: HttpServer
) -> None:
    message = create(loop_url, [calc(mcp_server)])
    content = [block.model_dump(exclude_none=True) for block in message.content]
    use_id = content[0]["id"]
    follow_up = {"role": "user", "content": "Thanks."}
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": content}]
    # As chat messages: the call, its result as a tool message, the answer after it.
    chat = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": use_id,
                    "type": "function",
                    "function": {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": use_id, "content": "5"},
        {"role": "assistant", "content": ANSWER},
        follow_up,
    ]
    reply = httpx.post(
        f"{loop_url}/v1/tokenize", json={"model": MODEL, "messages": chat}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    expected = reply.json()["count"]
    assert count(loop_url, {"model": MODEL, "messages": [*messages, follow_up]}) == expected
    # The result sent back in the user turn (the request-side block) renders the same.
    user_result = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": content[:1]},
        {"role": "user", "content": [content[1]]},
        {"role": "assistant", "content": content[2:]},
        follow_up,
    ]
    assert count(loop_url, {"model": MODEL, "messages": user_result}) == expected
    # And the conversation goes on (here: the engine answers the tool result it ends with).
    again = client(loop_url).beta.messages.create(
        model=MODEL, max_tokens=50, messages=user_result[:3], betas=[BETA]
    )
    assert [b.type for b in again.content] == ["text"] and again.content[0].text == ANSWER


def test_tool_configuration_and_count_tokens(loop_url: str, mcp_server: HttpServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    without = count(loop_url, body)
    every_tool = count(loop_url, {**body, "mcp_servers": [calc(mcp_server)]})
    only_add = count(
        loop_url,
        {**body, "mcp_servers": [calc(mcp_server, tool_configuration={"allowed_tools": ["add"]})]},
    )
    disabled = count(
        loop_url,
        {**body, "mcp_servers": [calc(mcp_server, tool_configuration={"enabled": False})]},
    )
    assert without < only_add < every_tool
    assert disabled == without


def test_max_tokens_bounds_the_whole_message(loop_url: str, mcp_server: HttpServer) -> None:
    # The first turn alone (the call) is as long as a message without MCP tools.
    plain = client(loop_url).messages.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": QUESTION}]
    )
    first = plain.usage.output_tokens
    message = create(loop_url, [calc(mcp_server)], max_tokens=first + 2)
    # The second turn had the 2 tokens left: the answer is cut there.
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == first + 2


def test_a_client_tool_keeps_its_name(loop_url: str, mcp_server: HttpServer) -> None:
    # The request's own `add` wins over the server's: the call is the client's to run.
    tool = {"name": "add", "input_schema": {"type": "object"}}
    message = create(loop_url, [calc(mcp_server)], tools=[tool])
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use"


def test_a_server_named_by_the_gateway_config(loop_url: str) -> None:
    message = create(loop_url, [{"type": "url", "name": "calc"}])
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    assert message.content[1].content[0].text == "5"
    with pytest.raises(anthropic.BadRequestError) as refused:
        create(loop_url, [{"type": "url", "name": "nowhere"}])
    assert "mcp_servers.0.url" in refused.value.body["error"]["message"]


def test_a_server_that_cannot_be_listed_is_a_400(loop_url: str, mcp_server: HttpServer) -> None:
    for url in ("http://127.0.0.1:9/mcp", mcp_server.base + "/junk-rpc"):
        with pytest.raises(anthropic.BadRequestError) as refused:
            create(loop_url, [calc(mcp_server), {"type": "url", "url": url, "name": "dead"}])
        error = refused.value.body["error"]
        assert error["type"] == "invalid_request_error"
        assert "mcp_servers.1" in error["message"] and "'dead'" in error["message"], error


def test_a_failing_tool_is_an_error_result_and_calls_stop_at_ten(failing_url: str) -> None:
    # The engine calls `fail` after every result: ten calls run, the eleventh is refused.
    message = create(failing_url, [{"type": "url", "name": "calc"}])
    kinds = [b.type for b in message.content]
    assert kinds == ["mcp_tool_use", "mcp_tool_result"] * 11, kinds
    results = message.content[1::2]
    assert all(r.is_error for r in results)
    # The server hides the exception (boom) and says which tool failed.
    assert all("Error executing tool fail" in r.content[0].text for r in results[:10])
    assert "limit of 10 MCP tool calls" in results[10].content[0].text
    assert message.stop_reason == "end_turn"


def test_private_urls_are_refused_unless_allowed(failing_url: str, mcp_server: HttpServer) -> None:
    reply = httpx.post(
        f"{failing_url}/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
            "mcp_servers": [calc(mcp_server)],
        },
        headers={"anthropic-beta": BETA},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("mcp_servers.0.url: "), error
    for bad, where in [
        ({"type": "url", "url": "ftp://x/", "name": "a"}, "mcp_servers.0.url"),
        ({"type": "url", "url": mcp_server.url}, "mcp_servers.0.name"),
        ({"type": "sse", "url": mcp_server.url, "name": "a"}, "mcp_servers.0.type"),
        (calc(mcp_server, tool_configuration={"allowed_tools": "add"}), "allowed_tools"),
    ]:
        with pytest.raises(anthropic.BadRequestError) as refused:
            create(failing_url, [bad])
        assert where in refused.value.body["error"]["message"]


# --- without processes: the blocks' conversion and the builder -----------------------------------


def test_mcp_blocks_split_the_assistant_turn() -> None:
    use = {"type": "mcp_tool_use", "id": "m1", "name": "add", "server_name": "s", "input": {}}
    result = {"type": "mcp_tool_result", "tool_use_id": "m1", "is_error": True, "content": []}
    call = {"id": "m1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    user = {"role": "user", "content": "Q"}
    messages, prefill = chat_messages(
        None,
        [
            user,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me add."},
                    use,
                    result,
                    {"type": "mcp_tool_listing", "mcp_server_name": "s", "tools": []},
                    {"type": "text", "text": "Done"},
                ],
            },
        ],
    )
    assert messages == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Let me add.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "m1", "content": "Error"},
        {"role": "assistant", "content": "Done"},
    ]
    assert prefill  # the message's text after the results is continued
    # A message ending in its results is answered, not continued.
    messages, prefill = chat_messages(None, [user, {"role": "assistant", "content": [use, result]}])
    assert messages[-1]["role"] == "tool" and not prefill
    with pytest.raises(InvalidRequest) as refused:
        chat_messages(None, [user, {"role": "assistant", "content": [use]}])
    assert refused.value.param == "messages.1"
    with pytest.raises(InvalidRequest) as refused:
        chat_messages(None, [{"role": "user", "content": [use]}])
    assert refused.value.param == "messages.0.content.0.type"


def _call(index: int, name: str, arguments: str) -> ParsedDelta:
    function = {"name": name, "arguments": ""}
    start = {"index": index, "id": f"c{index}", "type": "function", "function": function}
    return ParsedDelta(tool_calls=[start, {"index": index, "function": {"arguments": arguments}}])


def test_builder_makes_mcp_and_client_calls_of_one_turn() -> None:
    message: dict[str, Any] = {"content": []}
    builder = MessageBuilder(message, keep_events=True, mcp_tools={"add": "calc"}, max_calls=2)
    builder.feed(_call(0, "add", '{"a": 1}'))
    builder.feed(_call(1, "get_weather", "{}"))
    builder.feed(_call(2, "add", "{}"))  # past max_calls: dropped
    uses = builder.end_turn()
    assert [b["type"] for b in message["content"]] == ["mcp_tool_use", "tool_use"]
    assert uses == [message["content"][0]] and uses[0]["input"] == {"a": 1}
    assert builder.tool_uses == 1 and not builder.bad_inputs
    # The next turn numbers its calls from 0 again, and max_calls counts afresh.
    builder.feed(_call(0, "add", '{"a": '))  # cut short
    builder.feed(_call(1, "add", "{}"))
    uses = builder.end_turn()
    assert len(uses) == 2 and builder.bad_inputs == {uses[0]["id"]}
    assert [b["type"] for b in message["content"]][2:] == ["mcp_tool_use", "mcp_tool_use"]
