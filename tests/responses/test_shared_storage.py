"""Two gateways (two processes each) on one store, for each backend: whatever one stores, the
other serves; a background response started on one is cancelled through the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Proc, start_gateway
from tests.faults.common import log_lines, wait_for
from tests.responses.conftest import MODEL, fast_sim, sqlite_url
from tests.responses.test_responses_api import client

DEADLINE_S = 60.0


@pytest.fixture(scope="module", params=["sqlite", "postgres", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path_factory.mktemp("shared"))
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(scope="module")
def pair(
    shared_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """Two gateways of two processes each on ``shared_url``, before one slow engine-sim."""
    aborts = tmp_path_factory.mktemp("aborts") / "aborts.log"
    sim = fast_sim("--itl-base-ms", "20", "--abort-log", str(aborts))
    gateways: list[Proc] = []
    try:
        for _ in range(2):
            gateways.append(
                start_gateway(sim.address, extra=("--storage", shared_url, "--workers", "2"))
            )
        a, b = (f"http://{g.address}" for g in gateways)
        yield a, b, aborts
    finally:
        for gateway in gateways:
            gateway.stop()
        sim.stop()


def test_what_one_gateway_stores_the_other_serves(pair: tuple[str, str, Path]) -> None:
    a, b, _ = pair
    created = [
        client(a).responses.create(model=MODEL, input=f"question {i}", max_output_tokens=3)
        for i in range(6)
    ]
    for response in created:
        # A new client each time: new connections, spread over the gateway's processes.
        assert client(b).responses.retrieve(response.id).output_text == response.output_text
    followup = client(b).responses.create(
        model=MODEL, input="and?", previous_response_id=created[0].id, max_output_tokens=3
    )
    assert followup.usage is not None
    assert followup.usage.input_tokens > created[0].usage.input_tokens
    conversation = client(b).conversations.create(
        items=[{"type": "message", "role": "user", "content": "hello"}]
    )
    client(a).responses.create(
        model=MODEL, input="more", conversation=conversation.id, max_output_tokens=2
    )
    items = client(b).conversations.items.list(conversation.id, order="asc").data
    assert [i.role for i in items] == ["user", "user", "assistant"]
    client(a).responses.delete(created[1].id)
    with pytest.raises(Exception, match="not found"):
        client(b).responses.retrieve(created[1].id)


def test_a_cancel_reaches_the_run_on_another_gateway(pair: tuple[str, str, Path]) -> None:
    a, b, aborts = pair
    queued = client(a).responses.create(
        model=MODEL, input="a long one", background=True, max_output_tokens=5000
    )
    running = lambda: client(b).responses.retrieve(queued.id).status == "in_progress"  # noqa: E731
    assert wait_for(running, DEADLINE_S)
    assert client(b).responses.cancel(queued.id).status == "cancelled"
    aborted = wait_for(lambda: any(queued.id in line for line in log_lines(aborts)), DEADLINE_S)
    assert aborted, "the engine never got an Abort"
    assert client(a).responses.retrieve(queued.id).status == "cancelled"
