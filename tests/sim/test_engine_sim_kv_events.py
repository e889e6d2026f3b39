"""engine-sim as a fleet member: KV events, resume, snapshots, load records, DP ranks, flush.

Real sim processes and a grpcio client; every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import common_pb2

from .kvclient import (
    KvReader,
    KvState,
    event_batches,
    last_seq,
    stored_events,
    without_load,
)
from .simproc import (
    BACKENDS,
    FAST_TIMING,
    SimFactory,
    SimProcess,
    generate_request,
    split_responses,
    take,
)

LONG = 30_000  # with 1 ms per token, far longer than any test waits


def _prompt(seed: int, length: int) -> list[int]:
    return [1000 + (seed * 7919 + i * 37) % 50_000 for i in range(length)]


def _generate(sim: SimProcess, rid: str, prompt: list[int], max_tokens: int, **kw: Any) -> Any:
    request = generate_request(
        sim.backend, rid, prompt, max_tokens=max_tokens, ignore_eos=True, **kw
    )
    _, completes = split_responses(list(sim.stub().Generate(request, timeout=20)))
    assert len(completes) == 1
    return completes[0]


def _block_size_of(sim: SimProcess) -> int:
    info = sim.stub().GetServerInfo(sim.pb.GetServerInfoRequest(), timeout=5)
    if sim.backend == "sglang":
        return int(info.server_args["page_size"])
    return info.block_size


@pytest.mark.parametrize(("backend", "block_size"), [("vllm", 16), ("sglang", 8)])
def test_stored_events_carry_each_block_once_with_tokens_and_chain(
    sim_factory: SimFactory, backend: str, block_size: int
) -> None:
    sim = sim_factory(*FAST_TIMING, "--block-size", str(block_size), backend=backend)
    assert _block_size_of(sim) == block_size
    reader = KvReader(sim)
    prompt = _prompt(1, 5 * block_size // 2)  # two full blocks and half of a third
    output = list(_generate(sim, "first", prompt, max_tokens=2 * block_size).output_ids)
    full = prompt + output  # 4.5 blocks: the cache holds 4

    batches = reader.wait_for(lambda b: sum(len(s.blocks) for s in stored_events(b)) >= 4)
    first, second = list(stored_events(batches))
    # After prefill: the prompt's full blocks, the first one without a parent.
    assert not first.HasField("parent_block_hash")
    assert [list(b.token_ids) for b in first.blocks] == [
        prompt[:block_size],
        prompt[block_size : 2 * block_size],
    ]
    # When the request ends: the blocks its output filled, chained on the prompt's last one.
    assert second.parent_block_hash == first.blocks[-1].block_hash
    assert [list(b.token_ids) for b in second.blocks] == [
        full[2 * block_size : 3 * block_size],
        full[3 * block_size : 4 * block_size],
    ]
    for stored in (first, second):
        assert stored.tier == common_pb2.KV_CACHE_TIER_DEVICE
        assert stored.locality == common_pb2.KV_CACHE_LOCALITY_LOCAL
        assert stored.HasField("group_idx") and stored.group_idx == 0
        assert {b.block_size for b in stored.blocks} == {block_size}
    published = event_batches(batches)
    assert [b.sequence_number for b in published] == [1, 2]
    assert {b.dp_rank for b in published} == {0} and all(b.HasField("dp_rank") for b in published)
    assert [e.event_id for b in published for e in b.events] == [1, 2]

    # The same prompt again hits the cache and stores nothing new; the next prompt's blocks are
    # the next batch.
    assert _generate(sim, "again", prompt, max_tokens=1).cached_tokens == 2 * block_size
    other = _prompt(2, 2 * block_size + 1)
    _generate(sim, "other", other, max_tokens=1)
    batches = reader.wait_for(
        lambda b: any(s.blocks[0].token_ids[0] == other[0] for s in stored_events(b))
    )
    hashes = [block.block_hash for s in stored_events(batches) for block in s.blocks]
    assert len(hashes) == len(set(hashes)) == 6
    reader.close()


def test_eviction_publishes_removals_leaves_first(sim_factory: SimFactory) -> None:
    sim = sim_factory(*FAST_TIMING, "--cache-blocks", "4")
    reader = KvReader(sim)
    first = _prompt(3, 4 * 16 + 1)
    _generate(sim, "a", first, max_tokens=1)
    batches = reader.wait_for(lambda b: sum(len(s.blocks) for s in stored_events(b)) >= 4)
    first_hashes = [block.block_hash for s in stored_events(batches) for block in s.blocks]
    assert len(first_hashes) == 4

    second = _prompt(4, 4 * 16 + 1)
    _generate(sim, "b", second, max_tokens=1)
    batches = reader.wait_for(
        lambda b: any(e.WhichOneof("data") == "removed" for x in b for e in x.events)
    )
    removed = [
        list(e.removed.block_hashes)
        for batch in event_batches(batches)
        for e in batch.events
        if e.WhichOneof("data") == "removed"
    ]
    # The whole first chain goes, its last block first: a parent outlives its children.
    assert removed == [first_hashes[::-1]]
    state = KvState().apply_all(batches).ranks[0]
    assert [tokens for _, tokens in state.values()] == [
        tuple(second[i * 16 : (i + 1) * 16]) for i in range(4)
    ]
    assert _generate(sim, "a-again", first, max_tokens=1).cached_tokens == 0
    reader.close()


def test_resume_replays_exactly_the_missed_batches(sim_factory: SimFactory) -> None:
    sim = sim_factory(*FAST_TIMING)
    reference = KvReader(sim)  # subscribed throughout
    early = KvReader(sim)
    _generate(sim, "r1", _prompt(5, 40), max_tokens=20)
    cursor = last_seq(early.wait_for_seq(2))
    early.close()

    for index in range(3):
        _generate(sim, f"r{index + 2}", _prompt(6 + index, 40), max_tokens=20)
    final = last_seq(reference.wait_for_seq(8))
    assert final == 8
    expected = [without_load(b) for b in event_batches(reference.batches) if b.sequence_number > 2]

    resumed = KvReader(sim, start=cursor)
    replayed = event_batches(resumed.wait_for_seq(final))
    assert [without_load(b) for b in replayed] == expected
    # Load-only batches repeat the stream's last sequence number; the first record carries the
    # telemetry.
    assert all(b.sequence_number >= cursor for b in resumed.batches)
    assert resumed.batches[0].load.HasField("cache_hit_rate")

    # From 0 while the history still reaches back to the first batch: the whole history.
    late = KvReader(sim, start=0)
    everything = event_batches(late.wait_for_seq(final))
    assert [without_load(b) for b in everything] == [
        without_load(b) for b in event_batches(reference.batches)
    ]
    assert not any(b.HasField("snapshot") for b in everything)

    # A live batch reaches every subscriber with the next number: no gap, no duplicate.
    _generate(sim, "r5", _prompt(9, 40), max_tokens=20)
    for reader in (reference, resumed, late):
        numbers = [b.sequence_number for b in event_batches(reader.wait_for_seq(final + 2))]
        assert numbers == list(range(numbers[0], final + 3))
        reader.close()


def _check_snapshot(chunks: list[Any], end: int) -> KvState:
    """A well-formed snapshot ending at sequence `end`; returns the state it describes."""
    count = chunks[0].snapshot.count
    assert count >= 1 and len(chunks) == count
    assert [c.snapshot.index for c in chunks] == list(range(count))
    assert [c.sequence_number for c in chunks] == list(range(end - count + 1, end + 1))
    assert chunks[0].events[0].WhichOneof("data") == "cleared"
    assert all(e.event_id == 0 for c in chunks for e in c.events)
    assert {c.snapshot.unknown_before for c in chunks} == {0}
    state = KvState()
    for chunk in chunks:
        state.apply(chunk, strict=True)  # parents before children
    assert chunks[0].snapshot.blocks == sum(len(blocks) for blocks in state.ranks.values())
    return state


def test_an_old_cursor_gets_a_snapshot_then_live_events(sim_factory: SimFactory) -> None:
    sim = sim_factory(*FAST_TIMING, "--kv-history", "3")
    reference = KvReader(sim)
    # A long prompt (over 512 blocks) makes the snapshot take more than one chunk.
    _generate(sim, "long", _prompt(10, 9000), max_tokens=20)
    for index in range(5):
        _generate(sim, f"r{index}", _prompt(11 + index, 40), max_tokens=20)
    end = last_seq(reference.wait_for_seq(12))
    assert end == 12
    truth = KvState().apply_all(reference.batches)

    stale = KvReader(sim, start=1)
    fresh = KvReader(sim, start=0)  # the history no longer reaches back to batch 1
    for reader in (stale, fresh):
        batches = reader.wait_for(
            lambda b: bool(b) and len(event_batches(b)) >= b[0].snapshot.count >= 1
        )
        chunks = event_batches(batches)
        assert chunks[0].snapshot.count >= 2
        state = _check_snapshot(chunks, end)
        assert state == truth

    _generate(sim, "after", _prompt(20, 40), max_tokens=20)
    live = event_batches(reference.wait_for_seq(end + 2))[-2:]
    for reader in (stale, fresh):
        batches = event_batches(reader.wait_for_seq(end + 2))
        after = [b for b in batches if not b.HasField("snapshot")]
        assert [without_load(b) for b in after] == [without_load(b) for b in live]
        reader.close()
    reference.close()


def test_engine_load_records_follow_the_queue(sim_factory: SimFactory) -> None:
    sim = sim_factory(*FAST_TIMING, "--max-num-seqs", "1", "--kv-heartbeat-ms", "50")
    early = KvReader(sim, loads_before_first_batch=True)
    plain = KvReader(sim)
    # Before the publisher's first batch: load_only batches numbered 0, for subscribers that
    # asked for them; idle, they keep coming as heartbeats.
    idle = early.wait_for(lambda b: len(b) >= 3)
    assert all(b.load.load_only and b.sequence_number == 0 and not b.events for b in idle)
    assert idle[0].load.HasField("cache_hit_rate") and idle[0].load.max_total_num_tokens > 0
    assert (idle[0].load.running_requests, idle[0].load.waiting_requests) == (0, 0)
    assert idle[0].load.max_running_requests == 1

    waiting_prompt = _prompt(30, 40)
    busy = sim.stub().Generate(
        generate_request("vllm", "busy", _prompt(31, 40), max_tokens=LONG), timeout=30
    )
    take(busy, 1)
    queued = sim.stub().Generate(
        generate_request("vllm", "queued", waiting_prompt, max_tokens=3), timeout=30
    )

    def queue_seen(batches: list[Any]) -> bool:
        return any((b.load.running_requests, b.load.waiting_requests) == (1, 1) for b in batches)

    batches = early.wait_for(queue_seen)
    record = next(b.load for b in batches if queue_seen([b]))
    assert record.waiting_uncached_tokens == len(waiting_prompt)
    assert record.token_usage > 0
    load = sim.stub().GetLoads(sim.pb.GetLoadsRequest(), timeout=5).loads[0]
    assert (load.num_running_reqs, load.num_waiting_reqs) == (1, 1)
    assert load.num_waiting_uncached_tokens == record.waiting_uncached_tokens

    busy.cancel()
    _, completes = split_responses(list(queued))
    assert completes[0].completion_tokens == 3

    def drained(batches: list[Any]) -> bool:
        last = batches[-1]
        return last.sequence_number > 0 and last.load.running_requests == 0

    for reader in (early, plain):
        batches = reader.wait_for(drained)
        # Samples order the records; a load_only batch repeats the last sequence sent.
        samples = [b.load.sample for b in batches]
        assert samples == sorted(samples) and len(set(samples)) == len(samples)
        highest = 0
        for batch in batches:
            if batch.load.load_only:
                assert batch.sequence_number == highest and not batch.events
            else:
                assert batch.sequence_number == highest + 1
                highest = batch.sequence_number
    # A subscriber that did not ask for early records got nothing before the first batch.
    assert plain.batches[0].sequence_number == 1 and not plain.batches[0].load.load_only
    count = len(plain.batches)
    plain.wait_for(lambda b: len(b) >= count + 2)  # idle heartbeats
    early.close()
    plain.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dp_ranks_are_independent_and_tagged(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory(*FAST_TIMING, "--data-parallel-size", "2", backend=backend)
    stub, pb = sim.stub(), sim.pb
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
    if backend == "sglang":
        assert info.server_args["dp_size"] == 2
    else:
        assert info.data_parallel_size == 2
    reader = KvReader(sim)

    prompt = _prompt(40, 50)
    assert _generate(sim, "p0", prompt, 1, data_parallel_rank=0).cached_tokens == 0
    assert _generate(sim, "p1", prompt, 1, data_parallel_rank=1).cached_tokens == 0
    assert _generate(sim, "p0-again", prompt, 1, data_parallel_rank=0).cached_tokens == 48
    batches = reader.wait_for(lambda b: {x.dp_rank for x in event_batches(b)} == {0, 1})
    state = KvState().apply_all(batches)
    assert state.ranks[0] == state.ranks[1] and len(state.ranks[0]) == 3

    # Unpinned requests alternate between the ranks.
    spread = _prompt(41, 50)
    assert _generate(sim, "u1", spread, 1).cached_tokens == 0
    assert _generate(sim, "u2", spread, 1).cached_tokens == 0
    assert _generate(sim, "u3", spread, 1).cached_tokens == 48

    with pytest.raises(grpc.RpcError) as error:
        _generate(sim, "nowhere", prompt, 1, data_parallel_rank=2)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    busy = stub.Generate(
        generate_request(backend, "busy", _prompt(42, 20), max_tokens=LONG, data_parallel_rank=1),
        timeout=30,
    )
    take(busy, 1)
    loads = stub.GetLoads(pb.GetLoadsRequest(), timeout=5)
    assert loads.dp_rank_count == 2
    assert [(x.dp_rank, x.num_running_reqs) for x in loads.loads] == [(0, 0), (1, 1)]
    only = stub.GetLoads(pb.GetLoadsRequest(dp_rank=1), timeout=5).loads
    assert [(x.dp_rank, x.num_running_reqs) for x in only] == [(1, 1)]
    reader.wait_for(lambda b: any(x.dp_rank == 1 and x.load.running_requests == 1 for x in b))
    busy.cancel()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_kv_events_answers_unimplemented(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory(*FAST_TIMING, "--no-kv-events", backend=backend)
    error = KvReader(sim).wait_for_error()
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    prompt = _prompt(50, 40)
    _generate(sim, "cold", prompt, 1)
    assert _generate(sim, "warm", prompt, 1).cached_tokens == 32  # the cache still works
    assert sim.stub().GetLoads(sim.pb.GetLoadsRequest(), timeout=5).loads[0].cache_hit_rate > 0


def test_flush_cache_publishes_a_clear(sim_factory: SimFactory) -> None:
    sim = sim_factory(*FAST_TIMING)
    stub = sim.stub()
    reader = KvReader(sim)
    prompt = _prompt(60, 40)
    _generate(sim, "cold", prompt, 1)

    busy = stub.Generate(
        generate_request("vllm", "busy", _prompt(61, 20), max_tokens=LONG), timeout=30
    )
    take(busy, 1)
    refused = stub.FlushCache(common_pb2.FlushCacheRequest(timeout_s=0), timeout=5)
    assert not refused.success and "in flight" in refused.message
    busy.cancel()
    flushed = stub.FlushCache(common_pb2.FlushCacheRequest(timeout_s=10), timeout=15)
    assert flushed.success

    batches = reader.wait_for(
        lambda b: any(e.WhichOneof("data") == "cleared" for x in b for e in x.events)
    )
    assert KvState().apply_all(batches).ranks[0] == {}
    assert _generate(sim, "after-flush", prompt, 1).cached_tokens == 0
    reader.close()
