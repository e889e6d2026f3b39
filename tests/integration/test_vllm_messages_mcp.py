"""Anthropic Messages and the MCP tool loop in front of a real vLLM engine (the session's gRPC
servicer, tiny Llama).

Messages (``POST /v1/messages``, through the official ``anthropic`` SDK) is a chat request in
other clothes: a message's text and usage must be herdsman's chat completion of the equivalent
chat messages, its prompt the one vLLM's own OpenAI server renders for them (``vllm_render.py``,
no server started), and its greedy text the engine's own answer to that prompt (asked of the
VllmEngine service directly, decoded by the ``tokenizers`` library).

The MCP loop (``POST /v1/responses`` with an ``mcp`` tool on the real MCP test server,
``tests/mcp/mcp_app.py``) runs on the real engine: the tiny random-weight model never calls a
tool of its own accord, so ``tool_choice`` names ``add``, which herdsman turns into a JSON-schema
constraint (the tool's ``input_schema``) that vLLM's structured outputs enforce. The gateway runs
the call on the MCP server, feeds the result back and generates a second turn (tool choice auto).
The references: each turn's prompt as vLLM renders the equivalent chat messages, the engine's
constrained greedy output for the first (which must be the call's arguments), its greedy output
for the second (the message's text), and the sum the test computes from the arguments.

The model folder is the tiny Llama with the differential tier's Llama 3.1-style template (tools,
tool calls and tool results rendered). Its weights never pick EOS or another special token, so an
unconstrained greedy answer always runs to its token limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from tests.mcp.test_mcp_pool import HttpServer, start_http_server
from tests.responses.conftest import parse_sse
from tokenizers import Tokenizer

from .conftest import (
    HERE,
    SERVED_NAME,
    EngineClient,
    Gateway,
    VllmServer,
    start_gateway_logged,
)
from .test_vllm_differential import TOOL_TEMPLATE

TIMEOUT = 120.0
MAX_TOKENS = 8
SYSTEM = "You are a terse assistant."
QUESTION = "What is the weather like in Paris today? Answer in héllo wörld style 🚀."
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}
WEATHER_DESCRIPTION = "The current weather in a city"
TOOL_INPUT = {"city": "Paris", "unit": "C"}
TOOL_OUTPUT = '{"temperature": 18, "sky": "sunny"}'

# Each case: the Messages body (without model, max_tokens and sampling) and the equivalent chat
# request.
MESSAGES_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text": (
        {"system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}]},
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
            ]
        },
    ),
    "tool_round_trip": (
        {
            "system": [{"type": "text", "text": SYSTEM}],
            "tools": [
                {
                    "name": "get_weather",
                    "description": WEATHER_DESCRIPTION,
                    "input_schema": WEATHER_SCHEMA,
                }
            ],
            "messages": [
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me check."},
                        {
                            "type": "tool_use",
                            "id": "toolu_01",
                            "name": "get_weather",
                            "input": TOOL_INPUT,
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_01",
                            "content": [{"type": "text", "text": TOOL_OUTPUT}],
                        }
                    ],
                },
            ],
        },
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "toolu_01",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": json.dumps(TOOL_INPUT),
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_01", "content": TOOL_OUTPUT},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": WEATHER_DESCRIPTION,
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ],
        },
    ),
}

MCP_QUESTION = "What is 2 + 3? Use the add tool."
# For the whole response (the loop's turns share it). Not ~16: the
# JSON grammar vLLM compiles for the schema allows any whitespace between tokens (its default;
# --structured-outputs-config disable_any_whitespace is off), and the random weights spend some
# 400 tokens of spaces, tabs and newlines before they close the object. At 16 the first turn ends
# by length mid-object, and no call runs.
MCP_MAX_OUTPUT_TOKENS = 1024


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny Llama with a template that renders tools (same weights: the session's
    gRPC engine serves it)."""
    out = tmp_path_factory.mktemp("tiny-llama-messages-mcp")
    for item in tiny_model.iterdir():
        shutil.copyfile(item, out / item.name)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TOOL_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def gateway(
    vllm_server: VllmServer, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway of this module's own (the MCP server is on 127.0.0.1: private URLs allowed)."""
    directory = tmp_path_factory.mktemp("gateway-messages-mcp")
    gateway = start_gateway_logged(
        vllm_server.address,
        directory / "gateway.log",
        "--model-path",
        str(tools_model),
        "--allow-private-mcp-urls",
        "--storage",
        "none",
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(
        base_url=f"http://{gateway.address}", api_key="unused", max_retries=0, timeout=TIMEOUT
    )
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_http_server("streamable_http", tmp_path_factory.mktemp("mcp"))
    yield server
    server.stop()


Render = Callable[[dict[str, dict[str, Any]]], dict[str, list[int]]]


@pytest.fixture(scope="module")
def render(
    vllm_python: Path, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Render:
    """The prompt ids vLLM's OpenAI server renders for chat requests (by name), each request
    rendered once per module (a render run imports vLLM: seconds of CPU)."""
    # The renderer's ModelConfig asks for a 32k context, more than the tiny model's positions:
    # it renders from the tokenizer files and a config.json allowing that (no weights read).
    render_dir = tmp_path_factory.mktemp("tiny-llama-render")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tools_model / name, render_dir / name)
    config = json.loads((tools_model / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (render_dir / "config.json").write_text(json.dumps(config))
    rendered: dict[str, list[int]] = {}

    def run(requests: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
        # Keyed by the request's JSON as sent, keys unsorted: their order is rendered (tojson).
        keys = {name: json.dumps(request) for name, request in requests.items()}
        missing = {keys[name]: r for name, r in requests.items() if keys[name] not in rendered}
        if missing:
            cases = [
                {"id": key, "model": str(render_dir), "request": request}
                for key, request in missing.items()
            ]
            done = subprocess.run(
                [str(vllm_python), str(HERE / "vllm_render.py")],
                input=json.dumps({"cases": cases}),
                capture_output=True,
                text=True,
                timeout=600,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                check=False,
            )
            assert done.returncode == 0, done.stderr[-4000:]
            for result in json.loads(done.stdout)["results"]:
                assert result["error"] is None, result
                rendered[result["id"]] = result["prompt_token_ids"]
        return {name: rendered[key] for name, key in keys.items()}

    return run


@pytest.fixture(scope="module")
def messages_prompts(render: Render) -> dict[str, list[int]]:
    return render({name: chat for name, (_body, chat) in MESSAGES_CASES.items()})


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


# --- helpers ------------------------------------------------------------------------------------


def chat(gateway: Gateway, request: dict[str, Any]) -> dict[str, Any]:
    body = {"model": SERVED_NAME, "temperature": 0, "max_tokens": MAX_TOKENS, **request}
    answer = httpx.post(f"http://{gateway.address}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def create_message(
    client: anthropic.Anthropic, body: dict[str, Any], *, stream: bool
) -> anthropic.types.Message:
    """A greedy message through the SDK, streamed or not (anthropic 2.x takes no sampling
    arguments: temperature goes in the body)."""
    kwargs: dict[str, Any] = {
        "model": SERVED_NAME,
        "max_tokens": MAX_TOKENS,
        "extra_body": {"temperature": 0},
        **body,
    }
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        streamed = "".join(events.text_stream)
        message = events.get_final_message()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == streamed  # type: ignore[union-attr]
    return message


def message_text(message: anthropic.types.Message) -> str:
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == SERVED_NAME
    [block] = message.content
    assert block.type == "text"
    return block.text


def respond(
    gateway: Gateway, body: dict[str, Any], *, stream: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final response object of a Responses call, and its events if streamed."""
    body = {"model": SERVED_NAME, "temperature": 0, "stream": stream, **body}
    url = f"http://{gateway.address}/v1/responses"
    if not stream:
        answer = httpx.post(url, json=body, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()), []
    with httpx.stream("POST", url, json=body, timeout=TIMEOUT) as answer:
        assert answer.status_code == 200, answer.read()
        events = parse_sse(answer.iter_lines())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return dict(events[-1]["response"]), events


def check_mcp_events(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """The stream of a response whose output is a listing, an MCP call and a message."""
    types = [e["type"] for e in events]
    end = "response.completed" if final["status"] == "completed" else "response.incomplete"
    in_order = [
        "response.created",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_text.done",
        end,
    ]
    positions = [types.index(t) for t in in_order]
    assert positions == sorted(positions) and types[-1] == end, types
    _listing, call, message = final["output"]
    deltas = [e for e in events if e["type"] == "response.mcp_call_arguments.delta"]
    assert "".join(e["delta"] for e in deltas) == call["arguments"]
    [done] = [e for e in events if e["type"] == "response.mcp_call_arguments.done"]
    assert done["arguments"] == call["arguments"] and done["item_id"] == call["id"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert message["content"][0]["text"] == text
    # Every item added is done, once, as the final response holds it.
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    finished = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [item["id"] for item in final["output"]] == [i["id"] for i in finished]
    assert finished == final["output"]


def tool_calls_logged(server: HttpServer, name: str) -> int:
    """The ``tools/call`` requests for ``name`` that reached the MCP server (its log)."""
    lines = server.log.read_text().splitlines() if server.log.exists() else []
    return sum(1 for line in lines if line.split()[1:3] == ["tools/call", name])


# --- Messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_text_message_is_the_chat_completion(
    gateway: Gateway,
    client: anthropic.Anthropic,
    engine_client: EngineClient,
    tokenizer: Tokenizer,
    messages_prompts: dict[str, list[int]],
    stream: bool,
) -> None:
    body, chat_request = MESSAGES_CASES["text"]
    prompt_ids = messages_prompts["text"]
    message = create_message(client, body, stream=stream)
    text = message_text(message)

    # herdsman's chat completion of the same messages: text and usage.
    completion = chat(gateway, chat_request)
    [choice] = completion["choices"]
    assert choice["message"]["content"] == text
    assert choice["finish_reason"] == "length"
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.input_tokens == completion["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == completion["usage"]["completion_tokens"] == MAX_TOKENS

    # Both are the engine's greedy answer to the prompt vLLM renders.
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=MAX_TOKENS)
    assert ref.finish_reason == "length"
    assert text == tokenizer.decode(list(ref.output_ids))
    assert message.usage.input_tokens == len(prompt_ids) == ref.prompt_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_round_trip_message_is_vllms_prompt(
    gateway: Gateway,
    client: anthropic.Anthropic,
    engine_client: EngineClient,
    tokenizer: Tokenizer,
    messages_prompts: dict[str, list[int]],
    stream: bool,
) -> None:
    body, chat_request = MESSAGES_CASES["tool_round_trip"]
    prompt_ids = messages_prompts["tool_round_trip"]
    # vLLM's rendering holds the tool, the call and its result (the template writes them as JSON).
    rendered = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert '"get_weather"' in rendered and '\\"sky\\": \\"sunny\\"' in rendered

    message = create_message(client, body, stream=stream)
    assert message.usage.input_tokens == len(prompt_ids)
    counted = client.messages.count_tokens(model=SERVED_NAME, **body)
    assert counted.input_tokens == len(prompt_ids)
    completion = chat(gateway, chat_request)
    assert completion["usage"]["prompt_tokens"] == len(prompt_ids)

    # The message completes: text, the engine's greedy answer to that prompt, and the chat's.
    text = message_text(message)
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=MAX_TOKENS)
    assert (
        text
        == tokenizer.decode(list(ref.output_ids))
        == completion["choices"][0]["message"]["content"]
    )
    assert text.strip()
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == ref.completion_tokens == MAX_TOKENS


# --- MCP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_forced_mcp_call_round_trip(
    gateway: Gateway,
    mcp_server: HttpServer,
    engine_client: EngineClient,
    tokenizer: Tokenizer,
    render: Render,
    stream: bool,
) -> None:
    calls_before = tool_calls_logged(mcp_server, "add")
    response, events = respond(
        gateway,
        {
            "input": MCP_QUESTION,
            "tools": [
                {
                    "type": "mcp",
                    "server_label": "calc",
                    "server_url": mcp_server.url,
                    "require_approval": "never",
                }
            ],
            "tool_choice": {"type": "function", "name": "add"},
            "max_output_tokens": MCP_MAX_OUTPUT_TOKENS,
        },
        stream=stream,
    )
    assert response["error"] is None, response["error"]
    kinds = [item["type"] for item in response["output"]]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], response["output"]
    listing, call, message = response["output"]
    if stream:
        check_mcp_events(events, response)

    # The server's tools, add among them with its schema.
    assert listing["server_label"] == "calc" and listing.get("error") is None
    tools = {tool["name"]: tool for tool in listing["tools"]}
    schema = tools["add"]["input_schema"]
    assert schema["type"] == "object" and sorted(schema["required"]) == ["a", "b"]
    assert {name: p["type"] for name, p in schema["properties"].items()} == {
        "a": "integer",
        "b": "integer",
    }

    # The forced call: arguments valid for add's schema, run on the server, its sum the output.
    assert call["name"] == "add" and call["server_label"] == "calc"
    arguments = json.loads(call["arguments"])
    assert isinstance(arguments, dict) and sorted(arguments) == ["a", "b"], arguments
    a, b = arguments["a"], arguments["b"]
    assert type(a) is int and type(b) is int, arguments
    assert call["output"] == str(a + b)
    assert call["error"] is None and call["status"] == "completed"
    assert tool_calls_logged(mcp_server, "add") == calls_before + 1

    # The references: each turn's prompt as vLLM renders the equivalent chat messages (the model
    # sees every listed tool). vLLM's renderer refuses a named tool_choice without a tool parser
    # (its server forces the call the same way, by the tool's schema); the template does not
    # read tool_choice, so the first turn renders without it.
    chat_tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool["description"],
                "parameters": tool["input_schema"],
            },
        }
        for tool in listing["tools"]
    ]
    question = {"role": "user", "content": MCP_QUESTION}
    prompts = render(
        {
            "first": {"messages": [question], "tools": chat_tools},
            "second": {
                "messages": [
                    question,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "add", "arguments": call["arguments"]},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": str(a + b)},
                ],
                "tools": chat_tools,
                "tool_choice": "auto",
            },
        }
    )
    first, second = prompts["first"], prompts["second"]
    # The first turn: the engine's greedy output under add's schema is the call's arguments,
    # and the grammar ended it (not the token limit).
    [ref1] = engine_client.generate(
        first,
        temperature=0.0,
        max_tokens=MCP_MAX_OUTPUT_TOKENS,
        json_schema=json.dumps(schema),
    )
    assert ref1.finish_reason == "stop", (ref1.finish_reason, ref1.completion_tokens)
    assert tokenizer.decode(list(ref1.output_ids)) == call["arguments"]
    # The second turn (tool choice auto): the engine's greedy answer is the message.
    # max_output_tokens bounds the whole response: the second turn gets what the first left.
    left = MCP_MAX_OUTPUT_TOKENS - ref1.completion_tokens
    [ref2] = engine_client.generate(second, temperature=0.0, max_tokens=left)
    assert message["role"] == "assistant"
    [part] = message["content"]
    assert part["type"] == "output_text"
    assert part["text"] == tokenizer.decode(list(ref2.output_ids))

    # The response ends with the second turn; usage covers both.
    if ref2.finish_reason == "length":
        assert response["status"] == "incomplete"
        assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    else:
        assert response["status"] == "completed"
    usage = response["usage"]
    assert usage["input_tokens"] > len(first)
    assert usage["input_tokens"] == len(first) + len(second)
    assert (len(first), len(second)) == (ref1.prompt_tokens, ref2.prompt_tokens)
    assert usage["output_tokens"] == ref1.completion_tokens + ref2.completion_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
