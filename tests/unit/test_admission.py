"""Admission: the concurrency limit, its bounded queue and timeout, the prompt-token budget, and
the board that makes the limit gateway-wide."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from herdsman.pipeline.admission import Admission
from herdsman.pipeline.errors import Overloaded
from herdsman.serve.shared_files import SharedBoard


async def test_no_limit_admits_everything() -> None:
    admission = Admission(max_concurrent=0)
    for _ in range(1000):
        await admission.acquire()
    assert admission.active == 1000


async def test_over_the_limit_requests_queue_in_order_and_get_freed_slots() -> None:
    admission = Admission(max_concurrent=2, queue_size=10, queue_timeout=30)
    await admission.acquire()
    await admission.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await admission.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert admission.queued == 3 and not order
    admission.release()
    await asyncio.wait_for(tasks[0], 30)
    admission.release()
    await asyncio.wait_for(tasks[1], 30)
    assert order == [0, 1] and admission.queued == 1
    admission.release()
    await asyncio.wait_for(tasks[2], 30)
    assert order == [0, 1, 2] and admission.active == 2


async def test_a_full_queue_is_refused_at_once() -> None:
    admission = Admission(max_concurrent=1, queue_size=1, queue_timeout=30)
    await admission.acquire()
    queued = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert refused.value.code == "queue_full" and refused.value.retry_after >= 1
    queued.cancel()


async def test_the_queue_timeout_refuses_and_forgets_the_waiter() -> None:
    admission = Admission(max_concurrent=1, queue_size=5, queue_timeout=0.01)
    await admission.acquire()
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert refused.value.code == "queue_timeout"
    assert admission.queued == 0 and admission.active == 1


async def test_a_waiter_that_leaves_does_not_take_a_slot() -> None:
    admission = Admission(max_concurrent=1, queue_size=5, queue_timeout=30)
    await admission.acquire()
    leaving = asyncio.create_task(admission.acquire())
    staying = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    admission.release()
    await asyncio.wait_for(staying, 30)
    assert admission.active == 1 and admission.queued == 0


async def test_prompt_token_budget() -> None:
    admission = Admission(max_prompt_tokens=100)
    admission.take_prompt_tokens(500)  # alone: admitted however long
    with pytest.raises(Overloaded) as refused:
        admission.take_prompt_tokens(1)
    assert refused.value.code == "prompt_tokens_in_flight"
    admission.release_prompt_tokens(500)
    admission.take_prompt_tokens(60)
    admission.take_prompt_tokens(40)
    with pytest.raises(Overloaded):
        admission.take_prompt_tokens(1)


async def test_shared_board_makes_the_limit_gateway_wide(tmp_path: Path) -> None:
    path = tmp_path / "board"
    SharedBoard.create(path, 3)
    one = Admission(max_concurrent=3, queue_size=5, queue_timeout=30)
    two = Admission(max_concurrent=3, queue_size=5, queue_timeout=30)
    one.board = SharedBoard(path, 3, 0)
    two.board = SharedBoard(path, 3, 2)
    await one.acquire()
    await one.acquire()
    await two.acquire()
    assert one.board.total() == two.board.total() == 3
    # Process two is full because of process one's requests: it queues...
    waiting = asyncio.create_task(two.acquire())
    await asyncio.sleep(0)
    assert two.queued == 1
    # ...and gets the slot another process freed, without being told (it looks again).
    one.release()
    await asyncio.wait_for(waiting, 30)
    assert two.active == 2 and one.board.total() == 3
    # A dead process's slot is cleared by the supervisor.
    SharedBoard.clear_slot(path, 2)
    assert one.board.total() == 1
