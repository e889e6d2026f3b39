"""POST /v1/messages and /v1/messages/count_tokens through the official anthropic SDK, against
engine-sims: each message is compared with the chat completion of the same conversation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from tests.conftest import QWEN3
from tests.messages.conftest import (
    CHAT_TOOLS,
    MODEL,
    TOOLS,
    VL_CONTEXT,
    VL_MODEL,
    chat,
    client,
    count,
    fast_sim,
    gateway_for,
    parse_sse,
    sse,
)

QUESTION = "Tell me about gateways."
WEATHER = "Weather in Zürich and Tokyo?"
REASONING = "The user wants the weather in two cities."
EXPECTED_CALLS = [
    ("get_weather", {"city": "Zürich", "unit": "C"}),
    ("get_weather", {"city": "東京"}),
]
IMAGE = Path(__file__).resolve().parent.parent / "multimodal" / "images" / "gray.png"
DEADLINE_S = 60.0


def check_event_order(events: list[dict]) -> None:
    """Anthropic's sequence: message_start, ping, then each block's start, deltas and stop (a
    thinking block's signature last), indexes 0, 1, ...; message_delta, message_stop."""
    assert [e["type"] for e in events[:2]] == ["message_start", "ping"]
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    started = events[0]["message"]
    assert started["content"] == [] and started["stop_reason"] is None
    open_block: dict | None = None
    next_index = 0
    last_delta: dict | None = None
    for event in events[2:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_block is None and event["index"] == next_index
            open_block, last_delta = event["content_block"], None
            next_index += 1
        elif kind == "content_block_delta":
            assert open_block is not None and event["index"] == next_index - 1
            expected = {
                "text": {"text_delta"},
                "thinking": {"thinking_delta", "signature_delta"},
                "tool_use": {"input_json_delta"},
            }[open_block["type"]]
            assert event["delta"]["type"] in expected
            last_delta = event["delta"]
        else:
            assert kind == "content_block_stop", kind
            assert open_block is not None and event["index"] == next_index - 1
            if open_block["type"] == "thinking":
                assert last_delta == {"type": "signature_delta", "signature": ""}
            open_block = None
    assert open_block is None


# --- text --------------------------------------------------------------------------------------


def test_text_message_is_the_chat_completion_of_the_same_messages(base_url: str) -> None:
    message = client(base_url).messages.create(
        model=MODEL,
        max_tokens=12,
        system="Answer briefly.",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"seed": 7},
    )
    reference = chat(
        base_url,
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        max_tokens=12,
        seed=7,
    )
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    [block] = message.content
    assert block.type == "text"
    assert block.text == reference["choices"][0]["message"]["content"]
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.input_tokens == reference["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == 12


def test_stream_helper_gives_the_created_message(base_url: str) -> None:
    sdk = client(base_url)
    request = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": QUESTION}],
        "extra_body": {"seed": 3},
    }
    created = sdk.messages.create(**request)
    with sdk.messages.stream(**request) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == created.content[0].text
    assert [(b.type, b.text) for b in final.content] == [("text", created.content[0].text)]
    assert (final.stop_reason, final.stop_sequence) == ("max_tokens", None)
    assert final.usage.input_tokens == created.usage.input_tokens
    assert final.usage.output_tokens == created.usage.output_tokens == 10


def test_streamed_events_follow_anthropics_sequence(base_url: str) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "seed": 5,
    }
    events = sse(base_url, body)
    types = [e["type"] for e in events]
    deltas = types.count("content_block_delta")
    assert deltas > 0
    assert types == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    check_event_order(events)
    assert events[2]["content_block"] == {"type": "text", "text": ""}
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    created = httpx.post(f"{base_url}/v1/messages", json={**body, "stream": False}, timeout=60)
    whole = created.json()
    assert whole["content"] == [{"type": "text", "text": text}]
    assert events[0]["message"]["usage"] == {
        "input_tokens": whole["usage"]["input_tokens"],
        "output_tokens": 0,
    }
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"] == {"output_tokens": 8}


def test_stop_sequences(base_url: str) -> None:
    sdk = client(base_url)
    request = {
        "model": MODEL,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": QUESTION}],
        "extra_body": {"seed": 11},
    }
    whole = sdk.messages.create(**request).content[0].text
    words = [w for w in whole.split() if len(w) >= 4]
    stop = words[len(words) // 2]
    before = whole[: whole.index(stop)]
    stopped = sdk.messages.create(**request, stop_sequences=["never appears", stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == before
    with sdk.messages.stream(**request, stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert final.content[0].text == before


def test_prefilled_answer_continues_the_last_assistant_turn(base_url: str) -> None:
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "A gateway is"},
    ]
    message = client(base_url).messages.create(
        model=MODEL, max_tokens=6, messages=messages, extra_body={"seed": 2}
    )
    reference = chat(
        base_url,
        messages,
        max_tokens=6,
        seed=2,
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert message.usage.input_tokens == reference["usage"]["prompt_tokens"]
    assert message.content[0].text == reference["choices"][0]["message"]["content"]


# --- tools and thinking ------------------------------------------------------------------------


def test_tool_calls_become_tool_use_blocks(scripted_url: str) -> None:
    messages = [{"role": "user", "content": WEATHER}]
    message = client(scripted_url).messages.create(
        model=MODEL, max_tokens=200, tools=TOOLS, messages=messages
    )
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, first, second = message.content
    reference = chat(scripted_url, messages, tools=CHAT_TOOLS, max_tokens=200)
    expected = reference["choices"][0]["message"]
    assert thinking.thinking == expected["reasoning_content"]
    assert thinking.thinking.strip() == REASONING and thinking.signature == ""
    assert text.text == expected["content"]
    assert [(c.name, c.input) for c in (first, second)] == EXPECTED_CALLS
    assert first.id.startswith("toolu_") and second.id.startswith("toolu_")
    assert first.id != second.id
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert message.usage.input_tokens == reference["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == reference["usage"]["completion_tokens"]


def test_streamed_tool_use(scripted_url: str) -> None:
    body = {"model": MODEL, "max_tokens": 200, "tools": TOOLS, "stream": True}
    events = sse(scripted_url, {**body, "messages": [{"role": "user", "content": WEATHER}]})
    check_event_order(events)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert all(s["input"] == {} and s["id"].startswith("toolu_") for s in starts[2:])
    for index, (name, arguments) in enumerate(EXPECTED_CALLS, start=2):
        assert starts[index]["name"] == name
        partial = "".join(
            e["delta"]["partial_json"]
            for e in events
            if e["type"] == "content_block_delta" and e["index"] == index
        )
        assert json.loads(partial) == arguments
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    # The SDK's helper assembles the same message.
    with client(scripted_url).messages.stream(
        model=MODEL, max_tokens=200, tools=TOOLS, messages=[{"role": "user", "content": WEATHER}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert [(b.name, b.input) for b in final.content[2:]] == EXPECTED_CALLS
    assert final.stop_reason == "tool_use"


def test_disable_parallel_tool_use_keeps_the_first_call(scripted_url: str) -> None:
    sdk = client(scripted_url)
    request = {
        "model": MODEL,
        "max_tokens": 200,
        "tools": TOOLS,
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [{"role": "user", "content": WEATHER}],
    }
    message = sdk.messages.create(**request)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert (message.content[2].name, message.content[2].input) == EXPECTED_CALLS[0]
    assert message.stop_reason == "tool_use"
    with sdk.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [EXPECTED_CALLS[0]]


def test_tool_round_trip_renders_like_the_chat_conversation(scripted_url: str) -> None:
    sdk = client(scripted_url)
    question = {"role": "user", "content": WEATHER}
    first = sdk.messages.create(model=MODEL, max_tokens=200, tools=TOOLS, messages=[question])
    thinking, text, call_a, call_b = first.content
    results = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": call_a.id, "content": "12 °C"},
            {
                "type": "tool_result",
                "tool_use_id": call_b.id,
                "content": [{"type": "text", "text": "no data"}],
                "is_error": True,
            },
            {"type": "text", "text": "And tomorrow?"},
        ],
    }
    messages = [question, first.to_param(), results]
    followup = sdk.messages.create(model=MODEL, max_tokens=5, tools=TOOLS, messages=messages)
    chat_messages = [
        question,
        {
            "role": "assistant",
            "content": text.text,
            "reasoning_content": thinking.thinking,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.input)},
                }
                for c in (call_a, call_b)
            ],
        },
        {"role": "tool", "tool_call_id": call_a.id, "content": "12 °C"},
        {"role": "tool", "tool_call_id": call_b.id, "content": "Error: no data"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    reference = chat(scripted_url, chat_messages, tools=CHAT_TOOLS, max_tokens=5)
    assert followup.usage.input_tokens == reference["usage"]["prompt_tokens"]
    body = {
        "model": MODEL,
        "tools": TOOLS,
        "messages": json.loads(json.dumps(messages, default=_dump)),
    }
    assert count(scripted_url, body) == followup.usage.input_tokens
    # The error flag reaches the prompt (as the "Error: " the chat conversation has).
    del body["messages"][2]["content"][1]["is_error"]
    assert count(scripted_url, body) < followup.usage.input_tokens


def _dump(value: object) -> object:
    """SDK content blocks (what ``Message.to_param`` holds) as plain JSON."""
    to_dict = getattr(value, "to_dict", None)
    assert to_dict is not None, value
    return to_dict()


def test_thinking_enabled_gives_thinking_blocks(scripted_url: str) -> None:
    sdk = client(scripted_url)
    request = {
        "model": MODEL,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Why?"}],
    }
    message = sdk.messages.create(**request)
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking.strip() == REASONING
    assert message.stop_reason == "end_turn"
    # display "omitted": the block and its signature, not its text.
    omitted = {**request, "thinking": {**request["thinking"], "display": "omitted"}}
    quiet = sdk.messages.create(**omitted)
    assert quiet.content[0].type == "thinking" and quiet.content[0].thinking == ""
    assert quiet.content[1:] == message.content[1:]
    events = sse(scripted_url, {**omitted, "stream": True})
    check_event_order(events)
    kinds = {e["delta"]["type"] for e in events if e["type"] == "content_block_delta"}
    assert "thinking_delta" not in kinds and "signature_delta" in kinds


def test_thinking_switch_is_the_templates(base_url: str) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    body = {"model": MODEL, "messages": messages}
    off = count(base_url, {**body, "thinking": {"type": "disabled"}})
    on = count(base_url, {**body, "thinking": {"type": "enabled", "budget_tokens": 1024}})
    chat_off = chat(
        base_url, messages, max_tokens=1, chat_template_kwargs={"enable_thinking": False}
    )
    chat_on = chat(base_url, messages, max_tokens=1, chat_template_kwargs={"enable_thinking": True})
    assert off == chat_off["usage"]["prompt_tokens"]
    assert on == chat_on["usage"]["prompt_tokens"]
    assert off != on  # Qwen3's template opens and closes an empty think block when it is off
    message = client(base_url).messages.create(
        model=MODEL, max_tokens=2, messages=messages, thinking={"type": "disabled"}
    )
    assert message.usage.input_tokens == off


def test_clear_thinking_keeps_the_latest_turns_thinking(base_url: str) -> None:
    def turn(reasoning: str, call_id: str, city: str, result: str) -> list[dict]:
        call = {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": city}}
        return [
            {"role": "assistant", "content": [{"type": "thinking", "thinking": reasoning}, call]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}],
            },
        ]

    def chat_turn(reasoning: str | None, call_id: str, city: str, result: str) -> list[dict]:
        arguments = json.dumps({"city": city})
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        assistant: dict = {"role": "assistant", "content": None, "tool_calls": [call]}
        if reasoning is not None:
            assistant["reasoning_content"] = reasoning
        return [assistant, {"role": "tool", "tool_call_id": call_id, "content": result}]

    question = {"role": "user", "content": WEATHER}
    messages = [
        question,
        *turn("Zürich first.", "toolu_a", "Zürich", "12 °C"),
        *turn("Now Tokyo.", "toolu_b", "東京", "20 °C"),
    ]
    body = {"model": MODEL, "tools": TOOLS, "messages": messages}

    def edits(keep: object) -> dict:
        return {
            **body,
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": keep}]},
        }

    def reference(first: str | None) -> int:
        chat_messages = [
            question,
            *chat_turn(first, "toolu_a", "Zürich", "12 °C"),
            *chat_turn("Now Tokyo.", "toolu_b", "東京", "20 °C"),
        ]
        return chat(base_url, chat_messages, tools=CHAT_TOOLS, max_tokens=1)["usage"][
            "prompt_tokens"
        ]

    everything = count(base_url, body)
    assert everything == reference("Zürich first.") == count(base_url, edits("all"))
    latest = count(base_url, edits({"type": "thinking_turns", "value": 1}))
    assert latest == reference(None) < everything
    refused = httpx.post(
        f"{base_url}/v1/messages/count_tokens",
        json={**body, "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
        timeout=30,
    )
    assert "clear_tool_uses_20250919" in _error(refused, 400, "invalid_request_error")


# --- the prompt --------------------------------------------------------------------------------


def test_count_tokens_is_the_messages_prompt(base_url: str) -> None:
    system = [
        # Claude Code's per-request billing line is left out, as chat leaves it out.
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=8d1e;"},
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
    ]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "user", "content": "Two user turns in a row are one turn."},
        {"role": "assistant", "content": [{"type": "text", "text": "Noted."}]},
        {"role": "user", "content": QUESTION},
    ]
    body = {"model": MODEL, "system": system, "messages": messages, "tools": TOOLS}
    tokens = count(base_url, body)
    message = client(base_url).messages.create(max_tokens=2, **body)
    assert message.usage.input_tokens == tokens
    reference = chat(
        base_url,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi.\nTwo user turns in a row are one turn."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": QUESTION},
        ],
        tools=CHAT_TOOLS,
        max_tokens=2,
    )
    assert tokens == reference["usage"]["prompt_tokens"]
    # The anthropic SDK's own call, and its headers (x-api-key, anthropic-version), work too.
    assert client(base_url).messages.count_tokens(**body).input_tokens == tokens


def test_image_inputs(vl_url: str, base_url: str) -> None:
    data = base64.b64encode(IMAGE.read_bytes()).decode()
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    messages = [{"role": "user", "content": content}]
    message = client(vl_url).messages.create(model=VL_MODEL, max_tokens=3, messages=messages)
    reference = chat(
        vl_url,
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
        model=VL_MODEL,
        max_tokens=3,
    )
    # The image's placeholder tokens are expanded alike: the counts equal.
    assert message.usage.input_tokens == reference["usage"]["prompt_tokens"]
    assert count(vl_url, {"model": VL_MODEL, "messages": messages}) == (message.usage.input_tokens)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(base_url).messages.create(model=MODEL, max_tokens=3, messages=messages)
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in refused.value.body["error"]["message"]


def test_max_tokens_past_the_context_window_stop_where_it_ends(vl_url: str) -> None:
    sdk = client(vl_url)
    request = {
        "model": VL_MODEL,
        "max_tokens": 64000,  # what Claude Code asks for, whatever the model
        "messages": [{"role": "user", "content": QUESTION}],
    }
    # The SDK refuses a non-streamed call this large unless it is given its own timeout.
    message = sdk.messages.create(**request, timeout=60)
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.usage.input_tokens + message.usage.output_tokens == VL_CONTEXT
    with sdk.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "model_context_window_exceeded"
    # A limit within the window is the client's: max_tokens.
    assert sdk.messages.create(**{**request, "max_tokens": 5}).stop_reason == "max_tokens"


# --- errors ------------------------------------------------------------------------------------


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    return body["error"]["message"]


def test_errors_are_anthropic_shaped(base_url: str) -> None:
    url = f"{base_url}/v1/messages"
    user = [{"role": "user", "content": "hi"}]
    missing = httpx.post(url, json={"model": MODEL, "messages": user}, timeout=30)
    assert "max_tokens" in _error(missing, 400, "invalid_request_error")
    not_json = httpx.post(url, content=b"{", timeout=30)
    _error(not_json, 400, "invalid_request_error")
    sdk = client(base_url)
    cases = [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        # anthropic 2.x dropped the sampling arguments (temperature, top_p, top_k) from
        # messages.create; Anthropic's range still holds for clients that send them.
        ({"messages": user, "extra_body": {"temperature": 1.5}}, "temperature"),
        (
            {"messages": user, "extra_body": {"mcp_servers": [{"type": "url"}]}},
            "mcp_servers.0.name",
        ),
        (
            {"messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "server tool",
        ),
        (
            {"messages": user, "thinking": {"type": "enabled", "budget_tokens": 4096}},
            "budget_tokens",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "x"}]}
                ]
            },
            "assistant",
        ),
    ]
    for request, words in cases:
        with pytest.raises(anthropic.BadRequestError) as refused:
            sdk.messages.create(model=MODEL, max_tokens=100, **request)
        assert refused.value.status_code == 400
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "invalid_request_error"
        assert words in refused.value.body["error"]["message"], refused.value.body
    with pytest.raises(anthropic.NotFoundError) as unknown:
        sdk.messages.create(model="no-such-model", max_tokens=5, messages=user)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="no-such-model", messages=user)


def test_disconnect_mid_stream_aborts_the_engine(base_url: str, abort_log: Path) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
    }
    with httpx.stream("POST", f"{base_url}/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = []
        for event in _events(response.iter_lines()):
            events.append(event)
            if event["type"] == "content_block_delta":
                break  # the client goes away mid-answer
    message_id = events[0]["message"]["id"]
    deadline = time.monotonic() + DEADLINE_S
    while f"abort {message_id}" not in (abort_log.read_text() if abort_log.exists() else ""):
        assert time.monotonic() < deadline, "the engine never got an Abort"
        time.sleep(0.05)


def _events(lines: Iterator[str]) -> Iterator[dict]:
    buffered: list[str] = []
    for line in lines:
        buffered.append(line)
        if line == "":
            yield from parse_sse(iter(buffered))
            buffered = []


@pytest.fixture(scope="module")
def failing_url() -> Iterator[str]:
    """A gateway whose engine fails every generation after 3 tokens."""
    sim = fast_sim(QWEN3, "--fail-after-tokens", "3")
    gateway = gateway_for(sim, "--max-retries", "1")
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


def test_engine_failures(failing_url: str) -> None:
    sdk = client(failing_url)
    user = [{"role": "user", "content": QUESTION}]
    # Not streamed: retried, then answered 500 api_error.
    with pytest.raises(anthropic.InternalServerError) as failed:
        sdk.messages.create(model=MODEL, max_tokens=50, messages=user)
    assert failed.value.status_code == 500
    assert failed.value.body["error"]["type"] == "api_error"
    # Streamed: once the answer started, an error event ends the stream.
    events = sse(failing_url, {"model": MODEL, "max_tokens": 50, "messages": user, "stream": True})
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert "message_stop" not in [e["type"] for e in events]
    with (
        pytest.raises(anthropic.APIStatusError),
        sdk.messages.stream(model=MODEL, max_tokens=50, messages=user) as stream,
    ):
        stream.get_final_message()
