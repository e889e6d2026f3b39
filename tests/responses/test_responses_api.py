"""POST /v1/responses through the official openai SDK: text, streaming events, tools, reasoning,
chains and stored responses, against engine-sims."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from tests.responses.conftest import MODEL, TOOLS, sse

QUESTION = "Tell me about gateways."


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def chat_prompt_tokens(base_url: str, messages: list[dict], **extra: object) -> tuple[int, str]:
    data = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "seed": 7, "max_tokens": 12, **extra},
        timeout=30,
    ).json()
    return data["usage"]["prompt_tokens"], data["choices"][0]["message"]["content"]


def test_text_response_is_the_chat_completion_of_the_same_messages(base_url: str) -> None:
    response = client(base_url).responses.create(
        model=MODEL,
        input=QUESTION,
        instructions="Answer briefly.",
        max_output_tokens=12,
        extra_body={"seed": 7},
    )
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": QUESTION},
    ]
    prompt_tokens, text = chat_prompt_tokens(base_url, messages)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "incomplete"  # max_output_tokens reached
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.output_text == text
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_tokens
    assert response.usage.output_tokens == 12
    assert response.usage.total_tokens == prompt_tokens + 12
    assert response.instructions == "Answer briefly."


def test_streamed_events_follow_openais_sequence(base_url: str) -> None:
    events = sse(
        f"{base_url}/v1/responses",
        {"model": MODEL, "input": QUESTION, "stream": True, "max_output_tokens": 10, "seed": 7},
    )
    types = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    assert events[-4]["text"] == text
    item_id = events[2]["item"]["id"]
    assert all(e.get("item_id", item_id) == item_id for e in events[2:-1])
    # The same request, not streamed, gives the same text.
    whole = client(base_url).responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=10, extra_body={"seed": 7}
    )
    assert whole.output_text == text


def test_sdk_stream_helper_assembles_the_response(scripted_url: str) -> None:
    # The SDK's helper needs ``response.completed``: the scripted engine ends with EOS.
    with client(scripted_url).responses.stream(model=MODEL, input=QUESTION) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert "<tool_call>" in final.output_text  # no tools: the calls stay text
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_reasoning_and_function_calls(scripted_url: str) -> None:
    response = client(scripted_url).responses.create(
        model=MODEL, input="Weather in Zürich and Tokyo?", tools=TOOLS
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    reasoning, message, first, second = response.output
    assert reasoning.content is not None
    assert reasoning.content[0].text.strip() == "The user wants the weather in two cities."
    assert message.content[0].text.strip() == "Let me check both."
    calls = [(c.name, json.loads(c.arguments)) for c in (first, second)]
    assert calls == [
        ("get_weather", {"city": "Zürich", "unit": "C"}),
        ("get_weather", {"city": "東京"}),
    ]
    assert first.call_id != second.call_id and first.call_id
    assert response.status == "completed"
    assert response.usage is not None
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens


def test_streamed_function_call_events(scripted_url: str) -> None:
    events = sse(
        f"{scripted_url}/v1/responses",
        {"model": MODEL, "input": "Weather?", "tools": TOOLS, "stream": True},
    )
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [json.loads(e["arguments"]) for e in done] == [
        {"city": "Zürich", "unit": "C"},
        {"city": "東京"},
    ]
    for event in done:
        deltas = [
            e["delta"]
            for e in events
            if e["type"] == "response.function_call_arguments.delta"
            and e["item_id"] == event["item_id"]
        ]
        assert "".join(deltas) == event["arguments"]
    reasoning = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert reasoning.strip() == "The user wants the weather in two cities."
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2, 3]
    assert events[-1]["type"] == "response.completed"
    final = events[-1]["response"]["output"]
    assert [i["type"] for i in final] == ["reasoning", "message", "function_call", "function_call"]


def test_parallel_tool_calls_false_keeps_the_first_call(scripted_url: str) -> None:
    response = client(scripted_url).responses.create(
        model=MODEL, input="Weather?", tools=TOOLS, parallel_tool_calls=False
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and json.loads(calls[0].arguments)["city"] == "Zürich"


def test_function_call_round_trip_renders_like_chat(base_url: str) -> None:
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"},
    ]
    response = client(base_url).responses.create(
        model=MODEL, input=items, tools=TOOLS, max_output_tokens=12, extra_body={"seed": 7}
    )
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    chat_tools = [
        {"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}
    ]
    prompt_tokens, text = chat_prompt_tokens(base_url, messages, tools=chat_tools)
    assert response.usage is not None and response.usage.input_tokens == prompt_tokens
    assert response.output_text == text


def test_previous_response_id_continues_the_exchange(base_url: str) -> None:
    sdk = client(base_url)
    first = sdk.responses.create(
        model=MODEL, input="Hello there.", max_output_tokens=6, extra_body={"seed": 1}
    )
    second = sdk.responses.create(
        model=MODEL,
        input="And then?",
        previous_response_id=first.id,
        max_output_tokens=6,
        extra_body={"seed": 1},
    )
    messages = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"},
    ]
    prompt_tokens, text = chat_prompt_tokens(base_url, messages, max_tokens=6, seed=1)
    assert second.usage is not None and second.usage.input_tokens == prompt_tokens
    assert second.output_text == text
    assert second.previous_response_id == first.id
    # Only this request's input is listed as its input items.
    items = sdk.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["And then?"]


def test_retrieve_delete_and_input_items(base_url: str) -> None:
    sdk = client(base_url)
    inputs = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    created = sdk.responses.create(model=MODEL, input=inputs, max_output_tokens=3)
    fetched = sdk.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    page = sdk.responses.input_items.list(created.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["message 0", "message 1"]
    assert page.has_more
    texts = [i.content[0].text for i in sdk.responses.input_items.list(created.id, order="asc")]
    assert texts == [f"message {i}" for i in range(5)]
    newest = sdk.responses.input_items.list(created.id, limit=1)
    assert newest.data[0].content[0].text == "message 4"  # desc by default
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_store_false_keeps_nothing(base_url: str) -> None:
    sdk = client(base_url)
    response = sdk.responses.create(model=MODEL, input="hi", store=False, max_output_tokens=2)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0]"),
        ({"input": "x", "previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"input": "x", "include": ["file_search_call.results"]}, "include"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "temperature": 3}, None),
        ({"input": "", "previous_response_id": None}, "input"),
    ],
)
def test_bad_requests_are_4xx_with_a_clear_error(base_url: str, body: dict, param: str) -> None:
    response = httpx.post(f"{base_url}/v1/responses", json={"model": MODEL, **body}, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_truncation_auto_drops_the_oldest_turns(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.conftest import start_gateway
    from tests.responses.conftest import fast_sim

    sim = fast_sim("--max-model-len", "300")
    gateway = start_gateway(sim.address, extra=("--storage", "none"))
    try:
        url = f"http://{gateway.address}"
        turns = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "word " * 30}
            for i in range(15)
        ]
        body = {"model": MODEL, "input": turns, "instructions": "Be brief.", "max_output_tokens": 8}
        refused = httpx.post(f"{url}/v1/responses", json=body, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"
        kept = httpx.post(
            f"{url}/v1/responses", json={**body, "truncation": "auto"}, timeout=30
        ).json()
        assert kept["truncation"] == "auto" and kept["status"] == "incomplete"
        assert kept["usage"]["input_tokens"] + 8 <= 300
        # The newest turn and the instructions stay: fewer turns fit than were sent.
        assert kept["usage"]["input_tokens"] > 40
    finally:
        gateway.stop()
        sim.stop()
