"""In-process checks of the prefix cache's events and the KV-event hub (no server)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from herdsman.sim.cli import add_arguments
from herdsman.sim.kv_events import SNAPSHOT_CHUNK_BLOCKS, KvEventHub
from herdsman.sim.kv_stream import KvSubscription
from herdsman.sim.load_report import LoadSnapshot
from herdsman.sim.options import SimOptions
from herdsman.sim.prefix_cache import (
    CACHE_CLEARED,
    BlocksRemoved,
    BlocksStored,
    PrefixCache,
    chain_keys,
)

from .kvclient import KvState
from .simproc import QWEN3


def test_cache_events_store_new_blocks_and_evict_leaves_first() -> None:
    cache = PrefixCache(6, 4, record_events=True)
    first = list(range(10))  # two full blocks
    cache.insert(first)
    k1, k2 = chain_keys(first, 4)
    extended = [*first[:8], *range(10, 20)]  # the same two blocks, then two more
    cache.insert(extended)
    _, _, k3, k4 = chain_keys(extended, 4)
    assert cache.events is not None
    assert [(e.parent, e.keys, [list(t) for t in e.tokens]) for e in cache.events] == [
        (None, [k1, k2], [[0, 1, 2, 3], [4, 5, 6, 7]]),
        (k2, [k3, k4], [[10, 11, 12, 13], [14, 15, 16, 17]]),
    ]
    cache.events.clear()

    other = list(range(100, 112))  # three blocks: seven in a cache of six
    cache.insert(other)
    stored, removed = cache.events
    assert isinstance(stored, BlocksStored) and len(stored.keys) == 3
    # The least recently used chain loses its last block, not its root.
    assert removed == BlocksRemoved([k4])
    assert cache.lookup([*extended, 0]) == 12

    seen: set[int] = set()
    for block in cache.live_blocks():
        assert block.parent is None or block.parent in seen  # parents before children
        seen.add(block.key)
    assert len(seen) == 6
    cache.clear()
    assert cache.events[-1] is CACHE_CLEARED and len(cache) == 0


def test_lookup_touches_parents_after_children() -> None:
    cache = PrefixCache(4, 4, record_events=True)
    chain = list(range(13))  # three blocks
    cache.insert(chain)
    cache.insert(list(range(50, 54)))  # one block: the cache is full
    assert cache.lookup(chain) == 12  # now the chain is the most recently used
    cache.insert(list(range(60, 68)))  # two blocks push out two
    assert cache.events is not None
    # The older block first, then the chain's leaf: its root was touched after it.
    assert cache.events[-1] == BlocksRemoved(
        [*chain_keys(range(50, 54), 4), chain_keys(chain, 4)[-1]]
    )
    # Keys are plain int64 values (Python's deterministic hash of an int tuple).
    assert all(-(2**63) <= key < 2**63 for key in chain_keys(chain, 4))


class _Rank:
    def __init__(self, rank: int, block_size: int) -> None:
        self.rank = rank
        self.cache = PrefixCache(100_000, block_size, record_events=True)

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(
            dp_rank=self.rank,
            running=0,
            waiting=0,
            waiting_uncached_tokens=0,
            used_tokens=0,
            capacity_tokens=1,
            cache_hit_rate=0.0,
            gen_throughput=0.0,
            max_running=1,
            prefill_pending_tokens=0,
            silence_ms=None,
        )


def _hub(ranks: int, *, history: int = 8, history_blocks: int = 10**6) -> KvEventHub:
    hub = KvEventHub(
        block_size=4, history_batches=history, history_blocks=history_blocks, heartbeat_s=1.0
    )
    hub.attach([_Rank(rank, 4) for rank in range(ranks)])
    return hub


def _publish_cache(hub: KvEventHub, rank: int) -> None:
    cache = hub.ranks[rank].cache
    assert cache.events is not None
    hub.publish(rank, cache.events)
    cache.events = []


def test_snapshot_of_an_engine_that_published_nothing_pads_its_numbers() -> None:
    hub = _hub(3)
    chunks = hub.snapshot(limit=0)
    # Three ranks need three chunks: empty batches were published to number them.
    assert hub.seq == 3
    assert [c.sequence_number for c in chunks] == [1, 2, 3]
    assert [(c.dp_rank, c.snapshot.index, c.snapshot.count) for c in chunks] == [
        (0, 0, 3),
        (1, 1, 3),
        (2, 2, 3),
    ]
    assert all([e.WhichOneof("data") for e in c.events] == ["cleared"] for c in chunks)


def test_snapshot_chunks_fit_the_sequence_numbers_they_may_use() -> None:
    hub = _hub(2, history=100)
    blocks = 3 * SNAPSHOT_CHUNK_BLOCKS - 100
    hub.ranks[0].cache.insert(range(blocks * 4))
    hub.ranks[1].cache.insert(range(5, 5 + 10 * 4))
    _publish_cache(hub, 0)
    _publish_cache(hub, 1)
    for _ in range(10):
        hub.publish(0, [])
    truth = KvState()
    for rank in range(2):
        truth.apply(hub.batch_proto(hub.entry(rank + 1)))  # type: ignore[arg-type]

    # Room for 12 chunks: 512 blocks each, one chunk for the small rank.
    roomy = hub.snapshot(limit=100)
    assert len(roomy) == 4
    # Room for 3 chunks: bigger chunks.
    tight = hub.snapshot(limit=3)
    assert len(tight) <= 3
    for chunks in (roomy, tight):
        count = len(chunks)
        assert [c.sequence_number for c in chunks] == list(range(hub.seq - count + 1, hub.seq + 1))
        assert [c.snapshot.index for c in chunks] == list(range(count))
        assert {c.snapshot.count for c in chunks} == {count}
        assert {c.snapshot.blocks for c in chunks} == {blocks + 10}
        # Each rank's first chunk begins with its clear; chains come parents first.
        firsts = [c for i, c in enumerate(chunks) if i == 0 or chunks[i - 1].dp_rank != c.dp_rank]
        assert [c.dp_rank for c in firsts] == [0, 1]
        assert all(c.events[0].WhichOneof("data") == "cleared" for c in firsts)
        state = KvState()
        for chunk in chunks:
            state.apply(chunk, strict=True)
        assert state == truth


def test_history_is_bounded_in_batches_and_blocks() -> None:
    hub = _hub(1, history=3)
    for _ in range(5):
        hub.publish(0, [])
    assert [hub.entry(s) is not None for s in range(7)] == [False, False, False] + [True] * 3 + [
        False
    ]
    assert hub.replay_reaches(2) and hub.replay_reaches(5)
    assert not hub.replay_reaches(1)

    small = _hub(1, history=100, history_blocks=5)
    small.ranks[0].cache.insert(range(4 * 4))  # 4 blocks
    _publish_cache(small, 0)
    small.ranks[0].cache.insert(range(100, 100 + 3 * 4))  # 3 more: 7 > 5
    _publish_cache(small, 0)
    assert small.entry(1) is None and small.entry(2) is not None


def test_cli_kv_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = SimOptions.from_namespace(parser.parse_args(["--model-path", str(QWEN3)]))
    assert (defaults.block_size, defaults.data_parallel_size) == (16, 1)
    assert defaults.kv_events and not defaults.serial_prefill
    assert (defaults.kv_history, defaults.kv_heartbeat_ms) == (4096, 1000.0)
    argv = ["--model-path", str(QWEN3), "--dp-size", "4", "--block-size", "32", "--no-kv-events"]
    options = SimOptions.from_namespace(parser.parse_args([*argv, "--serial-prefill"]))
    assert (options.data_parallel_size, options.block_size) == (4, 32)
    assert not options.kv_events and options.serial_prefill


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (the tasks involved run without timers)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_a_subscriber_the_history_left_behind_gets_a_snapshot() -> None:
    hub = _hub(1, history=3)
    cache = hub.ranks[0].cache
    sent: list[Any] = []
    gate = asyncio.Event()

    async def write(batch: Any) -> None:
        sent.append(batch)
        if len(sent) == 1:
            await gate.wait()  # a subscriber that stops reading after its first batch

    subscription = KvSubscription(hub, start=0, loads_before_first_batch=False)
    hub.subscribe(subscription)
    task = asyncio.create_task(subscription.run(write))
    cache.insert(range(8))
    _publish_cache(hub, 0)
    await _until(lambda: len(sent) == 1)
    for index in range(5):  # five more batches: the history keeps only the last three
        cache.insert(range(100 + 8 * index, 108 + 8 * index))
        _publish_cache(hub, 0)
    gate.set()
    await _until(lambda: subscription.cursor == 6)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    chunks = sent[1:]
    assert [(c.sequence_number, c.snapshot.index, c.snapshot.count) for c in chunks] == [(6, 0, 1)]
    state = KvState()
    state.apply(sent[0])
    state.apply(chunks[0], strict=True)
    assert len(state.ranks[0]) == 2 + 5 * 2
    assert {tokens for _, tokens in state.ranks[0].values()} == {
        tuple(block.tokens) for block in cache.live_blocks()
    }


async def test_a_cursor_ahead_of_the_engine_gets_a_snapshot() -> None:
    hub = _hub(1)
    for _ in range(3):
        hub.publish(0, [])
    sent: list[Any] = []

    async def write(batch: Any) -> None:
        sent.append(batch)

    # A cursor from an earlier life of the engine: the state behind it is gone.
    subscription = KvSubscription(hub, start=10, loads_before_first_batch=False)
    task = asyncio.create_task(subscription.run(write))
    await _until(lambda: len(sent) >= 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    snapshot = sent[0]
    assert snapshot.sequence_number == 3 and snapshot.snapshot.count == 1
    assert [e.WhichOneof("data") for e in snapshot.events] == ["cleared"]
    # Every batch carries the rank's load; the stream's first record has the telemetry too.
    assert not snapshot.load.load_only and snapshot.load.HasField("cache_hit_rate")
