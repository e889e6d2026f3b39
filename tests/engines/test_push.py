"""The push path: a stream's listener takes messages in the connection's callback while the
stream's reader waits, and what it does not take is read as usual, in order.

First Http2Stream alone (fed frames by hand, as its connection does), then a real engine-sim
behind the native transport: the engine's outputs reach a push sink instead of the generator,
and a sink that has had enough ends the call at the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from tests.engines.test_transport_faults import GENEROUS, STREAMING
from tests.sim.simproc import SimFactory

from herdsman.engines import (
    PUSH_DECLINED,
    PUSH_ENOUGH,
    PUSH_TAKEN,
    EngineOutput,
    EngineRequest,
    SamplingParams,
    connect_engine,
)
from herdsman.engines.transport.stream import Http2Stream

T = TypeVar("T")
WINDOW = 4096


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(120):
            return await coroutine

    return asyncio.run(bounded())


class Credits:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def send_credit(self, stream: Http2Stream, amount: int) -> None:
        self.sent.append(amount)


def framed(*messages: bytes) -> bytes:
    return b"".join(len(m).to_bytes(5, "big") + m for m in messages)


class Listener:
    """Answers from a script, one answer per message offered; records what it was offered."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.offered: list[bytes] = []

    def __call__(self, message: bytes) -> int:
        self.offered.append(message)
        return self.answers.pop(0)


async def waiting_reader(stream: Http2Stream) -> asyncio.Task[bytes | None]:
    """A task blocked in ``stream.read()`` with nothing queued."""
    task = asyncio.ensure_future(stream.read())
    while stream._waiter is None or stream._waiter.done():
        await asyncio.sleep(0)
    return task


def feed(stream: Http2Stream, data: bytes) -> None:
    stream.received += len(data)  # what the connection counts before feeding
    assert stream.feed(data) is None


def test_taken_messages_never_wake_the_reader_and_are_credited() -> None:
    async def main() -> tuple[list[bytes], list[int], bool, bytes | None]:
        credits = Credits()
        stream = Http2Stream(credits, 1, 65535, WINDOW, 1 << 20)
        listener = Listener(*[PUSH_TAKEN] * 40)
        stream.listener = listener
        reader = await waiting_reader(stream)
        for n in range(40):
            feed(stream, framed(b"m%03d" % n + b"x" * 100))
            await asyncio.sleep(0)
        woken = reader.done()
        stream.finish(None)
        return listener.offered, credits.sent, woken, await reader

    offered, credits, woken, last = run(main())
    assert offered == [b"m%03d" % n + b"x" * 100 for n in range(40)]
    assert not woken  # nothing was queued for it
    assert last is None  # the call ended OK
    # Consumed by the listener, so credited back as it goes (in quarter-window batches).
    assert sum(credits) >= 40 * 109 - WINDOW // 4
    assert all(c >= WINDOW // 4 for c in credits)


def test_a_declined_message_and_all_after_it_are_read_in_order() -> None:
    async def main() -> tuple[list[bytes], list[bytes | None], list[bytes]]:
        stream = Http2Stream(Credits(), 1, 65535, WINDOW, 1 << 20)
        listener = Listener(PUSH_TAKEN, PUSH_DECLINED, PUSH_TAKEN, PUSH_TAKEN)
        stream.listener = listener
        reader = await waiting_reader(stream)
        feed(stream, framed(b"a", b"b", b"c"))  # b declined: b and c are queued
        # The reader is woken but has not run yet: the listener rests, d is queued too.
        feed(stream, framed(b"d"))
        read = [await reader, await stream.read(), await stream.read()]
        offered_before = list(listener.offered)
        # Caught up and waiting again: the listener is offered messages again.
        reader = await waiting_reader(stream)
        feed(stream, framed(b"e"))
        await asyncio.sleep(0)
        assert not reader.done()
        stream.finish(None)
        read.append(await reader)
        return offered_before, read, listener.offered

    offered_before, read, offered = run(main())
    assert offered_before == [b"a", b"b"]
    assert read == [b"b", b"c", b"d", None]
    assert offered == [b"a", b"b", b"e"]


def test_enough_ends_the_read_and_drops_what_follows() -> None:
    async def main() -> tuple[bytes | None, bytes | None]:
        stream = Http2Stream(Credits(), 1, 65535, WINDOW, 1 << 20)
        stream.listener = Listener(PUSH_TAKEN, PUSH_ENOUGH)
        reader = await waiting_reader(stream)
        feed(stream, framed(b"a", b"b", b"c"))
        first = await reader
        feed(stream, framed(b"d"))  # the engine has not seen the cancel yet
        return first, await stream.read()

    assert run(main()) == (None, None)


def test_a_failing_listener_fails_the_read() -> None:
    def listener(message: bytes) -> int:
        raise ValueError("broken sink")

    async def main() -> None:
        stream = Http2Stream(Credits(), 1, 65535, WINDOW, 1 << 20)
        stream.listener = listener
        reader = await waiting_reader(stream)
        feed(stream, framed(b"a", b"b"))
        with pytest.raises(ValueError, match="broken sink"):
            await reader
        assert stream.listener is None

    run(main())


def test_a_busy_reader_is_never_bypassed() -> None:
    """Messages that arrive while the reader is elsewhere are queued: never offered out of
    turn, even with nothing queued (its caller may be about to read the previous one)."""

    async def main() -> tuple[list[bytes], list[bytes | None]]:
        stream = Http2Stream(Credits(), 1, 65535, WINDOW, 1 << 20)
        listener = Listener()
        stream.listener = listener
        feed(stream, framed(b"a", b"b"))
        stream.finish(None)
        return listener.offered, [await stream.read(), await stream.read(), await stream.read()]

    assert run(main()) == ([], [b"a", b"b", None])


# -- a real engine behind the native transport ------------------------------------------------
def request(request_id: str, max_tokens: int) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        input_ids=[1, 2, 3],
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        stream=True,
    )


async def generate_with(
    address: str, request_id: str, max_tokens: int, sink: Callable[[EngineOutput], int]
) -> list[EngineOutput]:
    engine = await connect_engine(f"grpc://{address}", backend="vllm", transport="native")
    try:
        outputs = engine.generate(request(request_id, max_tokens), push=sink)
        return [output async for output in outputs]
    finally:
        await engine.close()


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_engine_outputs_reach_the_push_sink(sims: SimFactory, backend: str) -> None:
    sim = sims(*STREAMING, backend=backend)
    pushed: list[EngineOutput] = []

    def sink(output: EngineOutput) -> int:
        pushed.append(output)
        return PUSH_TAKEN

    async def main() -> list[EngineOutput]:
        engine = await connect_engine(
            f"grpc://127.0.0.1:{sim.port}", backend=backend, transport="native"
        )
        try:
            outputs = engine.generate(request("pushed", 30), push=sink)
            return [output async for output in outputs]
        finally:
            await engine.close()

    yielded = run(main())
    # The first output opens the call and the complete one ends it: both come through the
    # generator; every plain chunk between them went to the sink, in order.
    assert yielded[-1].finish_reason == "length"
    assert pushed, "nothing was pushed"
    assert all(o.finish_reason is None and o.logprobs is None for o in pushed)
    streamed = [t for o in yielded[:-1] for t in o.token_ids]
    assert len(streamed) + sum(len(o.token_ids) for o in pushed) == 30
    counts = [o.completion_tokens for o in [*yielded[:1], *pushed]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_a_declining_sink_leaves_every_output_to_the_generator(sims: SimFactory) -> None:
    sim = sims(*STREAMING)
    offered: list[Any] = []

    def sink(output: EngineOutput) -> int:
        offered.append(output)
        return PUSH_DECLINED

    async def main() -> list[EngineOutput]:
        return await generate_with(f"127.0.0.1:{sim.port}", "declined", 20, sink)

    yielded = run(main())
    assert sum(len(o.token_ids) for o in yielded if o.finish_reason is None) == 20
    # Offered while the generator waited, declined, then yielded all the same.
    assert offered
    assert {o.completion_tokens for o in offered} <= {o.completion_tokens for o in yielded}


def test_a_sink_that_has_enough_ends_the_call_at_the_engine(sims: SimFactory) -> None:
    sim = sims(*STREAMING)
    pushed: list[EngineOutput] = []

    def sink(output: EngineOutput) -> int:
        pushed.append(output)
        return PUSH_ENOUGH if len(pushed) == 3 else PUSH_TAKEN

    async def main() -> list[EngineOutput]:
        return await generate_with(f"127.0.0.1:{sim.port}", "enough", 100_000, sink)

    yielded = run(main())
    assert len(pushed) == 3
    assert yielded and yielded[-1].finish_reason is None  # ended early, not by the engine
    assert sim.wait_for_log_line("cancel enough", timeout=GENEROUS)
