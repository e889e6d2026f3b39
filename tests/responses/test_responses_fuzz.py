"""Fuzzing ``POST /v1/responses`` of a real gateway (hypothesis): bodies mixing valid and invalid
values of every field, every input item type (well-formed and malformed), tools of every type,
chains and conversations that exist and that do not, background and streamed runs, broken JSON.

Whatever comes in: the answer is below 500; a 4xx carries an OpenAI-shaped error naming a
message; a 200 is a response object, or a stream whose events are numbered in order and end with
one terminal event matching the final response; a stored response reads back; background runs
all finish; and the gateway keeps serving.

HERDSMAN_RESPONSES_FUZZ_EXAMPLES sets the number of bodies (default 150). Generation is
derandomized: every run sends the same bodies, so a failure reproduces.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import QWEN3, Proc, start_gateway, start_sim
from tests.faults.test_fuzz import (
    Client,
    encoded,
    floats,
    ints,
    json_value,
    odd_text,
    some,
    text,
    wrong,
)
from tests.responses.conftest import MODEL, SCRIPT, TOOLS, parse_sse, sqlite_url

EXAMPLES = int(os.environ.get("HERDSMAN_RESPONSES_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
TERMINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed"}
FINISHED = {"completed", "incomplete", "failed", "cancelled"}
AFTER_TOOL = "The weather is fine in both cities."
BACKGROUND_DEADLINE_S = 120.0

# -- strategies ------------------------------------------------------------------------------------
# A 1x1 PNG: a well-formed image the text-only model refuses; the rest are broken or unreachable.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
image_url = st.sampled_from([PNG, "data:image/png;base64,!!", "http://127.0.0.1:1/x.png", ""])
text_part = st.fixed_dictionaries(
    {"type": some(st.sampled_from(["input_text", "output_text", "text"])), "text": some(odd_text)},
    optional={"annotations": some(st.just([]))},
)
content_part = st.one_of(
    text_part,
    text_part,
    st.fixed_dictionaries({"type": st.just("refusal")}, optional={"refusal": some(odd_text)}),
    st.fixed_dictionaries(
        {"type": st.just("input_image")},
        optional={
            "image_url": some(image_url),
            "detail": some(st.sampled_from(["auto", "low", "high"])),
            "file_id": some(text),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["input_file", "input_audio", "summary_text", "video"])},
        optional={"file_data": some(text), "input_audio": json_value},
    ),
    json_value,
)
ROLES = ["user", "system", "developer", "assistant", "tool", "", "robot"]
item_id = some(st.sampled_from(["msg_1", "fc_1", "", "rs_1"]))
message_item = st.fixed_dictionaries(
    {"role": some(st.sampled_from(ROLES))},
    optional={
        "type": some(st.just("message")),
        "content": st.one_of(odd_text, st.lists(content_part, max_size=3), json_value),
        "id": item_id,
        "status": some(st.sampled_from(["completed", "in_progress"])),
    },
)
call_ids = st.sampled_from(["call_1", "call_2", "", "call_\x00"])
ARGUMENTS = ['{"city": "Paris"}', "{}", "", "{not json", '{"city": "東京", "unit": "C"}']
function_call_item = st.fixed_dictionaries(
    {"type": st.just("function_call")},
    optional={
        "call_id": some(call_ids),
        "name": some(st.sampled_from(["get_weather", "unknown_tool", ""])),
        "arguments": some(st.one_of(st.sampled_from(ARGUMENTS), odd_text)),
        "id": item_id,
        "status": some(st.just("completed")),
    },
)
function_output_item = st.fixed_dictionaries(
    {"type": st.just("function_call_output")},
    optional={
        "call_id": some(call_ids),
        "output": some(st.one_of(odd_text, st.lists(text_part, max_size=2))),
        "id": item_id,
    },
)
reasoning_item = st.fixed_dictionaries(
    {"type": st.just("reasoning")},
    optional={
        "summary": some(
            st.lists(st.fixed_dictionaries({"type": st.just("summary_text"), "text": odd_text}))
        ),
        "content": some(
            st.lists(
                st.fixed_dictionaries({"type": st.just("reasoning_text"), "text": some(odd_text)}),
                max_size=2,
            )
        ),
        "encrypted_content": some(text),
        "id": item_id,
    },
)
other_item = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "item_reference",
                "web_search_call",
                "file_search_call",
                "computer_call_output",
                "mcp_call",
                "custom_tool_call",
                "local_shell_call",
                "image_generation_call",
                "",
            ]
        )
    },
    optional={"id": some(text), "output": json_value, "call_id": some(call_ids)},
)
input_item = st.one_of(
    message_item,
    message_item,
    function_call_item,
    function_output_item,
    reasoning_item,
    other_item,
    json_value,
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
function_tool = st.fixed_dictionaries(
    {"type": st.just("function"), "name": some(st.sampled_from(["get_weather", "f", ""]))},
    optional={
        "description": some(text),
        "parameters": some(st.one_of(st.just(SCHEMA), json_value)),
        "strict": some(st.booleans()),
    },
)
other_tool = st.fixed_dictionaries(
    {
        "type": some(
            st.sampled_from(
                [
                    "web_search",
                    "web_search_preview",
                    "file_search",
                    "code_interpreter",
                    "computer_use_preview",
                    "mcp",
                    "image_generation",
                    "local_shell",
                    "custom",
                ]
            )
        )
    },
    optional={"name": some(text), "server_url": some(text), "container": json_value},
)
tool = st.one_of(function_tool, function_tool, st.just(TOOLS[0]), other_tool, json_value)
tool_choice = st.one_of(
    st.sampled_from(["auto", "none", "required", "sometimes", ""]),
    st.fixed_dictionaries(
        {"type": some(st.just("function"))},
        optional={"name": some(st.sampled_from(["get_weather", "missing"]))},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["web_search", "allowed_tools", "mcp", "custom"])},
        optional={"tools": json_value, "mode": some(text)},
    ),
)
text_format = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "yaml", "regex"])}),
    st.fixed_dictionaries(
        {"type": st.just("json_schema")},
        optional={
            "name": some(text),
            "schema": some(st.one_of(st.just(SCHEMA), json_value)),
            "strict": some(st.booleans()),
        },
    ),
    json_value,
)
reasoning = st.fixed_dictionaries(
    {},
    optional={
        "effort": some(
            st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max", ""])
        ),
        "summary": some(st.sampled_from(["auto", "concise", "detailed"])),
        "generate_summary": some(st.sampled_from(["auto", "concise"])),
    },
)
metadata = st.one_of(
    st.dictionaries(text, some(text), max_size=3),
    st.just({f"k{i}": "v" for i in range(17)}),
    st.just({"k": "v" * 513}),
    st.just({"k" * 65: "v"}),
)
# Small whenever it is a valid count: the engine stops at the end of its script in any case.
max_output_tokens = st.one_of(
    st.integers(1, 12),
    st.integers(1, 12),
    st.just(100),
    st.sampled_from([0, -1, 2**31, 2**63]),
    st.sampled_from([None, "8", 4.5, True]),
)
INCLUDES = [
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "file_search_call.results",
    "bogus",
]


# Plausible values: what a client following the API reference sends.
plain_text = odd_text.filter(bool)
valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "system", "developer", "assistant"]),
        "content": st.one_of(
            plain_text,
            st.lists(
                st.fixed_dictionaries({"type": st.just("input_text"), "text": odd_text}),
                min_size=1,
                max_size=2,
            ),
        ),
    },
    optional={"type": st.just("message")},
)
valid_call = st.fixed_dictionaries(
    {
        "type": st.just("function_call"),
        "call_id": st.just("call_1"),
        "name": st.just("get_weather"),
        "arguments": st.sampled_from(ARGUMENTS[:2]),
    }
)
valid_output = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": st.just("call_1"), "output": odd_text}
)
valid_reasoning = st.fixed_dictionaries(
    {
        "type": st.just("reasoning"),
        "summary": st.just([]),
        "content": st.lists(
            st.fixed_dictionaries({"type": st.just("reasoning_text"), "text": odd_text}),
            max_size=1,
        ),
    }
)
valid_input = st.one_of(
    plain_text,
    st.lists(valid_message, min_size=1, max_size=3),
    # A tool round trip: the question, the call, its output (maybe reasoning before the call).
    st.tuples(valid_message, st.lists(valid_reasoning, max_size=1), valid_call, valid_output).map(
        lambda t: [t[0], *t[1], t[2], t[3]]
    ),
)
valid_format = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    st.just({"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}),
)


@dataclass
class Known:
    """Ids that exist in the gateway's store, to mix with ones that do not."""

    responses: list[str]
    conversation: str


def fields(known: Known) -> dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]:
    """Every optional field: (plausible values, malformed or unsupported values)."""
    missing_ids = st.sampled_from(["resp_missing", "", "conv_missing"])
    return {
        "instructions": (odd_text, wrong),
        "tools": (st.just(TOOLS), st.lists(tool, max_size=3)),
        "tool_choice": (
            st.sampled_from(
                ["auto", "none", "required", {"type": "function", "name": "get_weather"}]
            ),
            tool_choice,
        ),
        "parallel_tool_calls": (st.booleans(), wrong),
        "max_tool_calls": (st.integers(1, 3), st.integers(-1, 0)),
        "text": (
            st.fixed_dictionaries({"format": valid_format}),
            st.fixed_dictionaries(
                {},
                optional={
                    "format": some(text_format),
                    "verbosity": some(st.sampled_from(["low", "medium", "high"])),
                },
            ),
        ),
        "reasoning": (
            st.fixed_dictionaries(
                {"effort": st.sampled_from(["none", "minimal", "low", "medium", "high"])}
            ),
            some(reasoning),
        ),
        "temperature": (st.floats(0, 2), floats),
        "top_p": (st.floats(0.01, 1), floats),
        "top_logprobs": (st.integers(0, 5), st.integers(-1, 21)),
        "metadata": (st.dictionaries(text, text, max_size=3), some(metadata)),
        "store": (st.booleans(), wrong),
        "previous_response_id": (st.sampled_from(known.responses), some(missing_ids)),
        "conversation": (
            st.one_of(st.just(known.conversation), st.just({"id": known.conversation})),
            some(st.one_of(missing_ids, st.fixed_dictionaries({"id": some(missing_ids)}))),
        ),
        "include": (
            st.lists(st.just("reasoning.encrypted_content"), max_size=1),
            some(st.lists(st.sampled_from(INCLUDES), max_size=2)),
        ),
        "truncation": (st.sampled_from(["auto", "disabled"]), some(st.just("middle"))),
        "user": (text, wrong),
        "seed": (st.integers(0, 100), ints),
        "top_k": (st.integers(-1, 5), st.integers(-5, -2)),
        "service_tier": (st.sampled_from(["auto", "default"]), wrong),
        "prompt_cache_key": (text, wrong),
        "chat_template_kwargs": (
            st.fixed_dictionaries({"enable_thinking": st.booleans()}),
            some(st.dictionaries(st.sampled_from(["enable_thinking", "tools"]), json_value)),
        ),
        "unknown_field": (json_value, json_value),
    }


REQUIRED: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "model": (st.just(MODEL), some(st.sampled_from(["", "gpt-4o", MODEL.upper()]))),
    "input": (valid_input, some(st.one_of(odd_text, st.lists(input_item, max_size=4)))),
    # A few tokens, or enough for the whole script (and for the answer to a tool result).
    "max_output_tokens": (st.sampled_from([100, 1, 100, 3, 12]), max_output_tokens),
    # Always there in a plausible body, so that every run mode is drawn often.
    "stream": (st.booleans(), wrong),
    "background": (st.sampled_from([False, False, True]), wrong),
}


def consistent(body: dict[str, Any]) -> dict[str, Any]:
    """A plausible body continues a stored response or a conversation, not both, and stores a
    background run."""
    body = dict(body)
    if "previous_response_id" in body:
        body.pop("conversation", None)
    if body["background"]:
        body["store"] = True
    return body


def responses_body(known: Known) -> st.SearchStrategy[dict[str, Any]]:
    """Plausible bodies; the same with one or two fields broken, or with items of every kind
    (malformed ones too) as input; and bodies broken throughout."""
    optional = fields(known)
    plausible = st.fixed_dictionaries(
        {name: good for name, (good, _bad) in REQUIRED.items()},
        optional={name: good for name, (good, _bad) in optional.items()},
    ).map(consistent)
    chaos = st.fixed_dictionaries(
        {name: st.one_of(good, good, bad) for name, (good, bad) in REQUIRED.items()},
        optional={name: st.one_of(good, bad) for name, (good, bad) in optional.items()},
    )
    every = {**REQUIRED, **optional}
    broken_fields = st.lists(
        st.sampled_from(sorted(every)).flatmap(
            lambda name: st.tuples(st.just(name), every[name][1])
        ),
        min_size=1,
        max_size=2,
    )

    def changed(pair: tuple[dict[str, Any], list[tuple[str, Any]]]) -> dict[str, Any]:
        body, changes = pair
        return {**body, **dict(changes)}

    broken = st.tuples(plausible, broken_fields).map(changed)
    odd_items = st.tuples(
        plausible, st.lists(input_item, min_size=1, max_size=4).map(lambda v: [("input", v)])
    ).map(changed)
    # Drawn by weight (hypothesis's one_of favours its first branches): half plausible.
    kinds = [plausible] * 5 + [broken] * 2 + [odd_items] * 2 + [chaos]
    return st.sampled_from(kinds).flatmap(lambda kind: kind)


def as_bytes(body: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly the body as JSON; sometimes broken JSON, another JSON value or raw bytes."""
    as_json = body.map(lambda v: json.dumps(v, ensure_ascii=False).encode())
    return st.sampled_from([as_json] * 6 + [encoded(body)]).flatmap(lambda kind: kind)


# -- the gateway under test ----------------------------------------------------------------------
@dataclass
class Target:
    engine: Proc
    gateway: Proc
    base: str
    client: Client
    known: Known
    # Background runs, and whether each was created streaming (only those replay as streams).
    background: list[tuple[str, bool]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def check(self, body: bytes) -> None:
        status, data = self.client.post("/v1/responses", body)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert status < 500, (status, data[:500], body[:500])
        if status >= 400:
            error = json.loads(data)["error"]
            assert isinstance(error["message"], str) and error["message"], data[:500]
            assert isinstance(error["type"], str) and error["type"], data[:500]
            return
        assert status == 200, (status, data[:500])
        streamed = data.startswith(b"event: ")
        if streamed:
            response = check_stream(data)
        else:
            response = json.loads(data)
            assert response["object"] == "response", data[:500]
            assert response["status"] in FINISHED | {"queued", "in_progress"}, data[:500]
            assert response["background"] or response["status"] in FINISHED, data[:500]
        check_response(response)
        if response["background"]:
            self.background.append((response["id"], streamed))
        elif response["store"]:
            stored = httpx.get(f"{self.base}/v1/responses/{response['id']}", timeout=30)
            assert stored.status_code == 200, stored.text
            assert stored.json()["status"] == response["status"]
            assert stored.json()["output"] == response["output"]
            items = httpx.get(f"{self.base}/v1/responses/{response['id']}/input_items", timeout=30)
            assert items.status_code == 200, items.text


def check_stream(data: bytes) -> dict[str, Any]:
    """The events of a streamed answer are in order and end with one terminal event."""
    events = parse_sse(iter(data.decode().splitlines()))
    assert events, data[:500]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created", kinds
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(events))), numbers
    assert kinds[-1] in TERMINAL_EVENTS, kinds
    assert not TERMINAL_EVENTS & set(kinds[:-1]), kinds
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert sorted(added) == sorted(done) == list(range(len(added))), kinds
    final: dict[str, Any] = events[-1]["response"]
    assert final["status"] == kinds[-1].removeprefix("response."), final["status"]
    assert len(final["output"]) == len(added)
    deltas: dict[str, str] = {}
    for event in events:
        if event["type"] == "response.output_text.delta":
            deltas[event["item_id"]] = deltas.get(event["item_id"], "") + event["delta"]
    for item in final["output"]:
        if item["type"] == "message":
            assert item["content"][0]["text"] == deltas.get(item["id"], ""), item
    return final


def check_response(response: dict[str, Any]) -> None:
    assert response["id"].startswith("resp_")
    for item in response["output"]:
        assert item["type"] in ("message", "reasoning", "function_call"), item
        assert item["id"]
        if item["type"] == "function_call":
            assert item["call_id"] and isinstance(item["arguments"], str), item
    if response["status"] in ("completed", "incomplete"):
        usage = response["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["input_tokens"] > 0
        if response["max_output_tokens"] is not None:
            assert usage["output_tokens"] <= response["max_output_tokens"]


def seed_store(base: str) -> Known:
    """A few stored responses to chain from (text, function calls, a failed chain), and a
    conversation."""
    ids: list[str] = []
    bodies: list[dict[str, Any]] = [
        {"input": "Hello.", "max_output_tokens": 4},
        {"input": "Weather in Paris and Tokyo?", "tools": TOOLS},
        {
            "input": "Answer in JSON.",
            "max_output_tokens": 3,
            "text": {"format": {"type": "json_object"}},
        },
    ]
    for body in bodies:
        answer = httpx.post(f"{base}/v1/responses", json={"model": MODEL, **body}, timeout=60)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    conversation = httpx.post(
        f"{base}/v1/conversations",
        json={"items": [{"type": "message", "role": "user", "content": "Hi there."}]},
        timeout=30,
    )
    assert conversation.status_code == 200, conversation.text
    return Known(responses=ids, conversation=conversation.json()["id"])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    store: Path = tmp_path_factory.mktemp("fuzz-store")
    # Zero latency; answers reasoning, text and two tool calls, then EOS (a plain text after a
    # tool result): every generation is short, and the output parsers are exercised.
    engine = start_sim(
        QWEN3,
        "vllm",
        "--ttft-base-ms",
        "0",
        "--prefill-ms-per-1k",
        "0",
        "--itl-base-ms",
        "0",
        "--itl-per-running-ms",
        "0",
        "--tokens-per-message",
        "4",
        "--max-model-len",
        "4096",
        "--response-text",
        SCRIPT,
        "--response-text-after-tool",
        AFTER_TOOL,
    )
    gateway = start_gateway(
        engine.address,
        extra=(
            "--model-path",
            str(QWEN3),
            "--workers",
            "1",
            "--no-warm-spare",
            "--storage",
            sqlite_url(store),
        ),
    )
    base = f"http://{gateway.address}"
    client = Client(gateway.address)
    try:
        yield Target(engine, gateway, base, client, seed_store(base))
    finally:
        client.close()
        gateway.stop()
        engine.stop()


def wait_finished(base: str, response_id: str, deadline: float) -> str:
    while True:
        answer = httpx.get(f"{base}/v1/responses/{response_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        status: str = answer.json()["status"]
        if status in FINISHED or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_no_responses_body_gets_a_5xx(target: Target) -> None:
    sent: list[bytes] = []

    @FUZZ
    @given(body=as_bytes(responses_body(target.known)))
    def run(body: bytes) -> None:
        target.check(body)
        sent.append(body)

    run()
    assert len(sent) >= EXAMPLES, f"only {len(sent)} bodies were sent"
    assert len(set(sent)) >= EXAMPLES * 0.8, f"only {len(set(sent))} distinct bodies were sent"
    # Both kinds of answer were seen: the generator does reach valid requests.
    assert target.statuses.get(200, 0) >= EXAMPLES // 20, target.statuses
    assert sum(n for s, n in target.statuses.items() if 400 <= s < 500) >= EXAMPLES // 4

    # Every background run finishes, and the gateway still answers a plain request.
    deadline = time.monotonic() + BACKGROUND_DEADLINE_S
    for response_id, streamed in target.background:
        assert wait_finished(target.base, response_id, deadline) in FINISHED, response_id
        if not streamed:
            continue
        # Its stored events replay as a whole stream ending in the stored final state.
        stored = httpx.get(f"{target.base}/v1/responses/{response_id}", timeout=30).json()
        replay = httpx.get(
            f"{target.base}/v1/responses/{response_id}", params={"stream": "true"}, timeout=60
        )
        assert replay.status_code == 200, replay.text
        final = check_stream(replay.content)
        assert (final["status"], final["output"]) == (stored["status"], stored["output"])
        # Resumed after an event: exactly the events after it.
        events = parse_sse(iter(replay.text.splitlines()))
        resumed = httpx.get(
            f"{target.base}/v1/responses/{response_id}",
            params={"stream": "true", "starting_after": "1"},
            timeout=60,
        )
        assert parse_sse(iter(resumed.text.splitlines())) == events[2:]
    assert target.gateway.process.poll() is None
    answer = httpx.post(
        f"{target.base}/v1/responses",
        json={"model": MODEL, "input": "Still there?", "tools": TOOLS},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    assert [i["type"] for i in answer.json()["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
