"""Conversations, background responses (poll, cancel, replay) and --storage none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import start_gateway
from tests.faults.common import log_lines, wait_for
from tests.responses.conftest import MODEL, fast_sim, parse_sse, sqlite_url
from tests.responses.test_responses_api import chat_prompt_tokens, client

DEADLINE_S = 60.0


def test_conversation_crud_and_items(base_url: str) -> None:
    sdk = client(base_url)
    conversation = sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": "first"}],
        metadata={"topic": "demo"},
    )
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "demo"}
    assert sdk.conversations.retrieve(conversation.id).id == conversation.id
    updated = sdk.conversations.update(conversation.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    added = sdk.conversations.items.create(
        conversation.id,
        items=[
            {"type": "message", "role": "user", "content": "second"},
            {"type": "message", "role": "assistant", "content": "third"},
        ],
    )
    assert len(added.data) == 2
    listed = sdk.conversations.items.list(conversation.id, order="asc")
    assert [i.content[0].text for i in listed.data] == ["first", "second", "third"]
    newest = sdk.conversations.items.list(conversation.id, limit=1)
    assert newest.data[0].content[0].text == "third" and newest.has_more
    item = sdk.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
    assert item.content[0].text == "second"
    sdk.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
    texts = [i.content[0].text for i in sdk.conversations.items.list(conversation.id, order="asc")]
    assert texts == ["first", "third"]
    deleted = sdk.conversations.delete(conversation.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)


def test_a_response_in_a_conversation_reads_and_extends_it(base_url: str) -> None:
    sdk = client(base_url)
    conversation = sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": "Hello there."}]
    )
    first = sdk.responses.create(
        model=MODEL,
        input="What now?",
        conversation=conversation.id,
        max_output_tokens=5,
        extra_body={"seed": 4},
    )
    messages = [
        {"role": "user", "content": "Hello there."},
        {"role": "user", "content": "What now?"},
    ]
    prompt_tokens, text = chat_prompt_tokens(base_url, messages, max_tokens=5, seed=4)
    assert first.usage is not None and first.usage.input_tokens == prompt_tokens
    assert first.output_text == text
    assert first.conversation is not None and first.conversation.id == conversation.id
    items = sdk.conversations.items.list(conversation.id, order="asc").data
    assert [i.type for i in items] == ["message", "message", "message"]
    assert items[-1].role == "assistant" and items[-1].content[0].text == text


def _wait_status(sdk: openai.OpenAI, response_id: str, statuses: set[str]) -> object:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = sdk.responses.retrieve(response_id)
        if response.status in statuses or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


@pytest.fixture(scope="module")
def slow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway before a sim that takes 50 ms per token and logs the aborts it receives."""
    directory = tmp_path_factory.mktemp("slow")
    aborts = directory / "aborts.log"
    sim = fast_sim("--itl-base-ms", "50", "--abort-log", str(aborts))
    gateway = start_gateway(sim.address, extra=("--storage", sqlite_url(directory)))
    try:
        yield f"http://{gateway.address}", aborts
    finally:
        gateway.stop()
        sim.stop()


def test_background_response_runs_to_completion(base_url: str) -> None:
    sdk = client(base_url)
    queued = sdk.responses.create(
        model=MODEL, input=QUESTION_BG, background=True, max_output_tokens=8
    )
    assert queued.background and queued.status in ("queued", "in_progress")
    done = _wait_status(sdk, queued.id, {"completed", "incomplete", "failed"})
    assert done.status == "incomplete" and done.usage.output_tokens == 8
    assert done.output_text


QUESTION_BG = "Run this in the background."


def test_cancel_stops_the_engine(slow_url: tuple[str, Path]) -> None:
    url, aborts = slow_url
    sdk = client(url)
    queued = sdk.responses.create(
        model=MODEL, input=QUESTION_BG, background=True, max_output_tokens=2000
    )
    _wait_status(sdk, queued.id, {"in_progress"})
    cancelled = sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    assert sdk.responses.retrieve(queued.id).status == "cancelled"
    aborted = wait_for(lambda: any(queued.id in line for line in log_lines(aborts)), DEADLINE_S)
    assert aborted, "the engine never got an Abort"
    # Cancelling a finished response changes nothing; a foreground one cannot be cancelled.
    assert sdk.responses.cancel(queued.id).status == "cancelled"
    foreground = sdk.responses.create(model=MODEL, input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(foreground.id)


def test_background_stream_replays_from_a_sequence_number(slow_url: tuple[str, Path]) -> None:
    url, _ = slow_url
    body = {
        "model": MODEL,
        "input": QUESTION_BG,
        "background": True,
        "stream": True,
        "max_output_tokens": 6,
    }
    with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        events = []
        for event in _events(lines):
            events.append(event)
            if len(events) == 3:
                break  # the client goes away; the run goes on
    response_id = events[0]["response"]["id"]
    done = _wait_status(client(url), response_id, {"completed", "incomplete"})
    assert done.status == "incomplete"
    replay_url = f"{url}/v1/responses/{response_id}?stream=true&starting_after=1"
    with httpx.stream("GET", replay_url, timeout=60) as response:
        assert response.status_code == 200
        replayed = parse_sse(response.iter_lines())
    assert [e["sequence_number"] for e in replayed] == list(range(2, 2 + len(replayed)))
    assert replayed[0] == events[2]
    assert replayed[-1]["type"] == "response.incomplete"
    text = "".join(e["delta"] for e in replayed if e["type"] == "response.output_text.delta")
    assert text == done.output_text


def _events(lines: Iterator[str]) -> Iterator[dict]:
    buffered: list[str] = []
    for line in lines:
        buffered.append(line)
        if line == "":
            yield from parse_sse(iter(buffered))
            buffered = []


def test_stored_responses_survive_a_restart(tmp_path: Path) -> None:
    sim = fast_sim()
    try:
        gateway = start_gateway(sim.address, extra=("--storage", sqlite_url(tmp_path)))
        url = f"http://{gateway.address}"
        created = client(url).responses.create(model=MODEL, input="remember", max_output_tokens=3)
        gateway.stop()
        gateway = start_gateway(sim.address, extra=("--storage", sqlite_url(tmp_path)))
        url = f"http://{gateway.address}"
        assert client(url).responses.retrieve(created.id).output_text == created.output_text
        gateway.stop()
    finally:
        sim.stop()


def test_storage_none_refuses_what_needs_it() -> None:
    sim = fast_sim()
    gateway = start_gateway(sim.address, extra=("--storage", "none"))
    try:
        url = f"http://{gateway.address}"
        sdk = client(url)
        plain = sdk.responses.create(model=MODEL, input="hi", max_output_tokens=2)
        assert plain.store is False and plain.output_text
        for extra in ({"store": True}, {"previous_response_id": plain.id}, {"background": True}):
            with pytest.raises(openai.BadRequestError, match=r"storage|stored"):
                sdk.responses.create(model=MODEL, input="hi", **extra)
        with pytest.raises(openai.BadRequestError):
            sdk.conversations.create()
        with pytest.raises(openai.BadRequestError):
            sdk.responses.retrieve(plain.id)
    finally:
        gateway.stop()
        sim.stop()
