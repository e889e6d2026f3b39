"""The KV-event subscriber (routing/kv_events.py) against real gRPC servers on loopback: a tiny
scripted servicer (both protocols) publishing synthetic streams, then engine-sim itself."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import (
    common_pb2,
    sglang_scheduler_pb2,
    sglang_scheduler_pb2_grpc,
    vllm_engine_pb2,
    vllm_engine_pb2_grpc,
)
from tests.faultproxy import FaultProxy
from tests.routing.kvsynth import SynthEngine
from tests.sim.simproc import FAST_TIMING, SimProcess, generate_request, split_responses, start_sim

from herdsman.engines import EngineClient, connect_engine
from herdsman.routing.kv_events import KvEventSubscriber
from herdsman.routing.kv_index import KvIndex
from herdsman.routing.load import WorkerLoad

BS = 4
PROTOS = {"vllm": vllm_engine_pb2, "sglang": sglang_scheduler_pb2}


class KvServicer:
    """SubscribeKvEvents and GetLoads, scripted by the test: a history of published batches
    (replayed from a resuming subscriber's cursor, inclusive, as vLLM's publisher does), live
    batches to every open stream, streams dropped on demand, optional snapshots for fresh
    subscribers, UNIMPLEMENTED on demand."""

    def __init__(self, backend: str) -> None:
        self.pb = PROTOS[backend]
        self.history: list[common_pb2.KvEventBatch] = []
        self.seq = 0
        self.replay = True
        self.unimplemented = False
        self.refuse = False
        self.snapshot: Callable[[], list[common_pb2.KvEventBatch]] | None = None
        self.requests: list[common_pb2.SubscribeKvEventsRequest] = []
        self.streams: set[asyncio.Queue[common_pb2.KvEventBatch | None]] = set()
        self.loads: list[dict[str, Any]] = [{"dp_rank": 0, "num_running_reqs": 1}]
        self.get_loads_calls = 0

    def publish(
        self, events: list[common_pb2.KvCacheEvent], dp_rank: int | None = None, **load: Any
    ) -> common_pb2.KvEventBatch:
        self.seq += 1
        batch = common_pb2.KvEventBatch(sequence_number=self.seq, events=events)
        if dp_rank is not None:
            batch.dp_rank = dp_rank
        if load:
            batch.load.CopyFrom(common_pb2.EngineLoad(**load))
        self.history.append(batch)
        for stream in self.streams:
            stream.put_nowait(batch)
        return batch

    def heartbeat(self, **load: Any) -> None:
        batch = common_pb2.KvEventBatch(sequence_number=self.seq)
        batch.load.CopyFrom(common_pb2.EngineLoad(load_only=True, **load))
        for stream in self.streams:
            stream.put_nowait(batch)

    def drop_streams(self) -> None:
        for stream in self.streams:
            stream.put_nowait(None)
        self.streams.clear()  # nothing more reaches them

    async def SubscribeKvEvents(self, request, context):
        self.requests.append(request)
        if self.unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "KV events not enabled")
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
        stream: asyncio.Queue[common_pb2.KvEventBatch | None] = asyncio.Queue()
        self.streams.add(stream)
        try:
            start = request.start_sequence_number
            if start == 0 and self.snapshot is not None:
                for batch in self.snapshot():
                    yield batch
            elif start and self.replay:
                for batch in list(self.history):
                    if batch.sequence_number >= start:
                        yield batch
            while True:
                batch = await stream.get()
                if batch is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped")
                yield batch
        finally:
            self.streams.discard(stream)

    async def GetLoads(self, request, context):
        self.get_loads_calls += 1
        return self.pb.GetLoadsResponse(
            dp_rank_count=len(self.loads),
            loads=[self.pb.SchedulerLoad(**load) for load in self.loads],
        )


class _Vllm(KvServicer, vllm_engine_pb2_grpc.VllmEngineServicer):
    pass


class _Sglang(KvServicer, sglang_scheduler_pb2_grpc.SglangSchedulerServicer):
    pass


async def serve(backend: str = "vllm") -> tuple[grpc.aio.Server, KvServicer, str]:
    server = grpc.aio.server()
    if backend == "vllm":
        servicer: KvServicer = _Vllm(backend)
        vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(servicer, server)
    else:
        servicer = _Sglang(backend)
        sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, f"grpc://127.0.0.1:{port}"


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def worker_of(engine: EngineClient, rank: int) -> str:
    return f"{engine.address}#{rank}"


class Harness:
    def __init__(self, backend: str = "vllm", transport: str = "native", **kwargs: Any) -> None:
        self.backend = backend
        self.transport = transport
        self.kwargs = kwargs
        self.index = KvIndex(BS)
        self.loads: list[tuple[str, WorkerLoad]] = []

    async def __aenter__(self) -> Harness:
        self.server, self.servicer, url = await serve(self.backend)
        self.engine = await connect_engine(url, backend=self.backend, transport=self.transport)
        options = {"reconnect_initial": 0.02, "reconnect_max": 0.2, "poll_interval": 0.05}
        options.update(self.kwargs)
        self.sub = KvEventSubscriber(
            self.engine,
            self.index,
            worker_of,
            on_load=lambda w, load: self.loads.append((w, load)),
            **options,
        )
        self.w0 = worker_of(self.engine, 0)
        self.w1 = worker_of(self.engine, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.stop()
        await self.engine.close()
        await self.server.stop(None)

    def applied(self, seq: int) -> Callable[[], bool]:
        return lambda: self.sub.last_sequence == seq

    def precise(self, worker: str, value: bool = True) -> Callable[[], bool]:
        return lambda: self.index.is_precise(worker) == value


def prompt(n: int, start: int = 1) -> list[int]:
    return list(range(start, start + n))


@pytest.mark.parametrize("transport", ["native", "grpcio"])
@pytest.mark.parametrize("backend", ["vllm", "sglang"])
async def test_events_feed_the_index_per_rank_with_loads(backend: str, transport: str) -> None:
    async with Harness(backend, transport, dp_size=2) as h:
        h.sub.start()
        await wait_for(lambda: len(h.servicer.streams) == 1, "the subscription")
        request = h.servicer.requests[0]
        assert request.start_sequence_number == 0 and request.load_records_before_first_batch
        e0, e1 = SynthEngine(BS, salt=0), SynthEngine(BS, salt=1)
        h.servicer.publish(e0.cache(prompt(13)), running_requests=3, sample=1)
        h.servicer.publish(
            e1.cache(prompt(9, start=50)),
            dp_rank=1,
            running_requests=1,
            waiting_requests=2,
            waiting_uncached_tokens=700,
            token_usage=0.5,
            sample=1,
        )
        await wait_for(h.applied(2), "both batches")
        assert h.index.match(prompt(13), [h.w0, h.w1]) == {h.w0: 12, h.w1: 0}
        assert h.index.match(prompt(9, start=50), [h.w0, h.w1]) == {h.w0: 0, h.w1: 8}
        # Seen from the engine's first batch: everything it holds is known.
        assert h.index.is_precise(h.w0) and h.index.is_precise(h.w1)
        load = h.sub.loads[h.w1]
        assert (load.source, load.running, load.waiting) == ("events", 1, 2)
        assert (load.waiting_uncached_tokens, load.token_usage) == (700, 0.5)
        assert h.sub.loads[h.w0].waiting_uncached_tokens is None
        assert h.sub.mode == "events"


async def test_resume_after_a_dropped_stream() -> None:
    async with Harness() as h:
        h.sub.start()
        engine = SynthEngine(BS)
        await wait_for(lambda: h.servicer.streams, "the subscription")
        h.servicer.publish(engine.cache(prompt(9)))
        h.servicer.publish(engine.cache(prompt(9, start=100)))
        await wait_for(h.applied(2), "the first batches")
        await wait_for(h.precise(h.w0), "precise")
        # The stream drops; the engine goes on caching while we are away.
        h.servicer.replay = False  # (until we let it replay)
        h.servicer.drop_streams()
        await wait_for(h.precise(h.w0, False), "approximate mode")
        # Meanwhile the router records what it sends there, beside the last known blocks.
        h.index.record_routed(h.w0, prompt(9, start=300))
        assert h.index.match(prompt(9, start=300), [h.w0]) == {h.w0: 8}
        assert h.index.match(prompt(9), [h.w0]) == {h.w0: 8}
        h.servicer.replay = True
        h.servicer.publish(engine.cache(prompt(9, start=200)))
        h.servicer.publish(engine.evict([engine.by_prefix[tuple(prompt(4))]]))
        await wait_for(h.applied(4), "the replayed batches")
        assert h.servicer.requests[-1].start_sequence_number == 2
        await wait_for(h.precise(h.w0), "precise again")
        assert h.index.match(prompt(9, start=200), [h.w0]) == {h.w0: 8}
        assert h.index.match(prompt(9), [h.w0]) == {h.w0: 0}
        # Back to precise: the approximate entries are gone.
        assert h.index.match(prompt(9, start=300), [h.w0]) == {h.w0: 0}
        assert h.sub.counters["duplicates"] >= 1  # batch 2, replayed


async def test_a_heartbeat_at_the_cursor_confirms_a_resume() -> None:
    async with Harness() as h:
        h.sub.start()
        await wait_for(lambda: h.servicer.streams, "the subscription")
        h.servicer.publish(SynthEngine(BS).cache(prompt(9)))
        await wait_for(h.applied(1), "batch 1")
        h.servicer.replay = False
        h.servicer.drop_streams()
        await wait_for(lambda: h.sub.counters["connects"] == 2 and h.servicer.streams, "reconnect")
        assert not h.index.is_precise(h.w0)
        h.servicer.heartbeat(running_requests=4)
        await wait_for(h.precise(h.w0), "precise")
        assert h.index.match(prompt(9), [h.w0]) == {h.w0: 8}
        assert h.sub.loads[h.w0].running == 4


async def test_a_gap_that_replay_cannot_fill_resyncs_from_zero() -> None:
    async with Harness() as h:
        h.sub.start()
        engine = SynthEngine(BS)
        await wait_for(lambda: h.servicer.streams, "the subscription")
        h.servicer.publish(engine.cache(prompt(9)))
        await wait_for(h.applied(1), "batch 1")
        # Down a while, during which batches 2-3 go by; the servicer keeps no history.
        h.servicer.replay = False
        h.servicer.refuse = True
        h.servicer.drop_streams()
        h.servicer.publish(engine.cache(prompt(9, start=100)))
        h.servicer.publish(engine.cache(prompt(9, start=200)))
        h.servicer.refuse = False
        await wait_for(lambda: h.servicer.streams, "reconnect")
        asked = len(h.servicer.requests)
        assert h.servicer.requests[-1].start_sequence_number == 1
        h.servicer.publish(engine.cache(prompt(9, start=300)))  # 4: a gap after 1
        await wait_for(lambda: len(h.servicer.requests) == asked + 1, "the replay attempt")
        assert h.servicer.requests[-1].start_sequence_number == 1
        await wait_for(lambda: h.servicer.streams, "the replay stream")
        h.servicer.publish(engine.cache(prompt(9, start=400)))  # 5: still a gap
        await wait_for(lambda: len(h.servicer.requests) == asked + 2, "the resync")
        assert h.servicer.requests[-1].start_sequence_number == 0
        assert h.sub.counters["resyncs"] == 1 and h.sub.counters["gaps"] == 2
        await wait_for(lambda: h.servicer.streams, "the resync stream")
        h.servicer.publish(engine.cache(prompt(9, start=500)))
        await wait_for(h.applied(6), "batch 6")
        # A fresh start mid-life: what the engine held before is unknown (reset), so the worker
        # stays approximate; the blocks stored since are indexed.
        assert not h.index.is_precise(h.w0)
        assert h.index.match(prompt(9, start=500), [h.w0]) == {h.w0: 8}
        assert h.index.match(prompt(9), [h.w0]) == {h.w0: 0}


async def test_an_engine_that_restarted_is_resynced() -> None:
    async with Harness() as h:
        h.sub.start()
        await wait_for(lambda: h.servicer.streams, "the subscription")
        for i in range(3):
            h.servicer.publish(SynthEngine(BS).cache(prompt(9, start=100 * i)))
        await wait_for(h.applied(3), "batch 3")
        # A new engine behind the same address: empty cache, sequence from 1 again.
        h.servicer.history, h.servicer.seq = [], 0
        h.servicer.drop_streams()
        await wait_for(lambda: len(h.servicer.requests) == 2 and h.servicer.streams, "reconnect")
        h.servicer.publish(SynthEngine(BS).cache(prompt(9, start=1000)))
        await wait_for(h.applied(1), "the new engine's batch 1")
        assert h.sub.counters["resyncs"] == 1
        assert h.index.match(prompt(9), [h.w0]) == {h.w0: 0}
        assert h.index.match(prompt(9, start=1000), [h.w0]) == {h.w0: 8}
        assert h.index.is_precise(h.w0)  # from the new engine's first batch


def snapshot_batches(
    engine: SynthEngine, first_seq: int, chunks: int, unknown_before: int = 0, dp_rank: int = 0
) -> list[common_pb2.KvEventBatch]:
    events = engine.snapshot_events()
    size = -(-len(events) // chunks)
    batches = []
    for i in range(chunks):
        batch = common_pb2.KvEventBatch(
            sequence_number=first_seq + i,
            events=events[i * size : (i + 1) * size],
            dp_rank=dp_rank,
            snapshot=common_pb2.KvSnapshotChunk(
                index=i, count=chunks, blocks=len(engine.blocks), unknown_before=unknown_before
            ),
        )
        batches.append(batch)
    return batches


@pytest.mark.parametrize("unknown_before", [0, 7])
async def test_snapshot_resync(unknown_before: int) -> None:
    async with Harness() as h:
        engine = SynthEngine(BS)
        conversations = [prompt(40, start=1000 * i) for i in range(50)]
        for ids in conversations:
            engine.cache(ids)
        engine.evict(list(engine.blocks)[:30])  # some chains have lost blocks, even heads
        # Something stale, from before: the snapshot's cleared event must wipe it.
        h.index.record_routed(h.w0, prompt(9, start=777_000))
        h.servicer.snapshot = lambda: snapshot_batches(engine, 40, 3, unknown_before)
        h.sub.start()
        await wait_for(h.applied(42), "the snapshot")
        for ids in conversations:
            assert h.index.match(ids, [h.w0]) == {h.w0: engine.cached_prefix(ids)}
        assert h.index.is_precise(h.w0) == (unknown_before == 0)
        assert h.index.match(prompt(9, start=777_000), [h.w0]) == {h.w0: 0}
        assert h.sub.counters["snapshots"] == 1
        # Live events continue after the last chunk.
        h.servicer.seq = 42
        h.servicer.publish(engine.cache(prompt(9, start=5_000_000)))
        await wait_for(h.applied(43), "batch 43")
        assert h.index.match(prompt(9, start=5_000_000), [h.w0]) == {h.w0: 8}


async def test_a_big_snapshot_is_applied_in_slices() -> None:
    """20k blocks: the event loop runs other tasks while the subscriber applies them."""
    async with Harness(slice_blocks=1024) as h:
        engine = SynthEngine(BS)
        for i in range(2000):
            engine.cache(prompt(40, start=1000 * i))
        h.servicer.snapshot = lambda: snapshot_batches(engine, 1, 2)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        h.sub.start()
        await wait_for(h.applied(2), "the snapshot")
        task.cancel()
        assert h.index.stats()["blocks"] == 20_000
        # Each 10k-block chunk is one gRPC message; the ticker ran between its slices.
        assert ticks >= 15
        assert h.index.match(prompt(40, start=1000 * 1999), [h.w0]) == {h.w0: 36}


async def test_unimplemented_falls_back_to_polling_loads() -> None:
    async with Harness(dp_size=2) as h:
        h.servicer.unimplemented = True
        h.servicer.loads = [
            {"dp_rank": 0, "num_running_reqs": 2, "num_waiting_reqs": 1},
            {"dp_rank": 1, "num_running_reqs": 5, "num_waiting_uncached_tokens": 40},
        ]
        h.sub.start()
        await wait_for(lambda: h.sub.mode == "poll", "poll mode")
        await wait_for(lambda: h.servicer.get_loads_calls >= 3, "three polls")
        assert len(h.servicer.requests) == 1  # never asked again
        load0, load1 = h.sub.loads[h.w0], h.sub.loads[h.w1]
        assert (load0.source, load0.running, load0.waiting) == ("poll", 2, 1)
        assert load0.waiting_uncached_tokens is None  # 0 beside waiting requests: not reported
        assert (load1.running, load1.waiting_uncached_tokens) == (5, 40)
        assert not h.index.is_precise(h.w0) and not h.index.is_precise(h.w1)
        h.index.record_routed(h.w1, prompt(9))
        assert h.index.match(prompt(9), [h.w0, h.w1]) == {h.w0: 0, h.w1: 8}


async def test_loads_are_polled_while_the_stream_carries_none() -> None:
    async with Harness() as h:
        h.sub.start()
        await wait_for(lambda: h.servicer.streams, "the subscription")
        h.servicer.publish(SynthEngine(BS).cache(prompt(9)))  # an older servicer: no load record
        await wait_for(lambda: h.servicer.get_loads_calls >= 2, "polls")
        assert h.sub.loads[h.w0].source == "poll"
        calls = h.servicer.get_loads_calls
        # Records on the stream: polling stops while they flow.
        for i in range(20):
            h.servicer.heartbeat(running_requests=i, sample=i + 1)
            await asyncio.sleep(0.02)
        assert h.servicer.get_loads_calls <= calls + 1
        assert h.sub.loads[h.w0].source == "events"
        assert h.sub.loads[h.w0].running == 19


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
async def test_get_loads_maps_both_protocols(backend: str) -> None:
    server, servicer, url = await serve(backend)
    engine = await connect_engine(url, backend=backend)
    try:
        servicer.loads = [
            {
                "dp_rank": 0,
                "num_running_reqs": 3,
                "num_waiting_reqs": 2,
                "num_waiting_uncached_tokens": 900,
                "token_usage": 0.25,
                "max_running_requests": 64,
            },
            {"dp_rank": 1},
        ]
        loads = await engine.get_loads()
        assert [rank for rank, _ in loads] == [0, 1]
        first = loads[0][1]
        assert (first.running, first.waiting, first.waiting_uncached_tokens) == (3, 2, 900)
        assert (first.token_usage, first.max_running, first.source) == (0.25, 64, "poll")
        assert loads[1][1].waiting_uncached_tokens == 0  # nothing waiting: truly none
    finally:
        await engine.close()
        await server.stop(None)


async def test_stop_ends_the_stream_at_the_engine() -> None:
    async with Harness() as h:
        h.sub.start()
        await wait_for(lambda: h.servicer.streams, "the subscription")
        await h.sub.stop()
        await wait_for(lambda: not h.servicer.streams, "the stream cancelled at the engine")
        assert h.sub.mode == "stopped"


# -- against engine-sim ------------------------------------------------------------------------
SIM_BS = 16


def sim_prompt(seed: int, blocks: int) -> list[int]:
    """A prompt of `blocks` full blocks and 5 more tokens (with 2 generated tokens, no block of
    the output completes: the engine caches exactly the prompt's blocks)."""
    rng = random.Random(seed)
    return [rng.randrange(1000, 50_000) for _ in range(blocks * SIM_BS + 5)]


async def sim_generate(sim: SimProcess, prompt_ids: list[int], rank: int) -> int:
    """Run a request on one DP rank of the sim; its cached prompt tokens, as the engine says."""
    request = generate_request(
        sim.backend,
        f"r{random.getrandbits(40)}",
        prompt_ids,
        max_tokens=2,
        ignore_eos=True,
        data_parallel_rank=rank,
    )
    stub = sim.stub()
    responses = await asyncio.to_thread(lambda: list(stub.Generate(request, timeout=30)))
    _, completes = split_responses(responses)
    return completes[-1].cached_tokens


async def predicted_then_served(
    h: Harness, sim: SimProcess, prompt_ids: list[int], rank: int
) -> tuple[int, int]:
    """What the index says rank's worker holds of the prompt, then what the engine served from
    its cache; then waits for the index to see the prompt's blocks stored."""
    worker = worker_of(h.engine, rank)
    predicted = h.index.match(prompt_ids, [worker])[worker]
    served = await sim_generate(sim, prompt_ids, rank)
    full = (len(prompt_ids) - 1) // SIM_BS * SIM_BS
    await wait_for(lambda: h.index.match(prompt_ids, [worker])[worker] == full, "the store")
    return predicted, served


@pytest.fixture
def sim_flags(tmp_path: Any) -> Any:
    started: list[SimProcess] = []

    def start(*flags: str, backend: str = "vllm") -> SimProcess:
        sim = start_sim(*FAST_TIMING, *flags, backend=backend, abort_log=tmp_path / "aborts")
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


class SimHarness(Harness):
    def __init__(self, sim: SimProcess, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(sim.backend, **kwargs)
        self.sim = sim
        self.index = KvIndex(SIM_BS)
        self.url = url or f"grpc://127.0.0.1:{sim.port}"

    async def __aenter__(self) -> SimHarness:
        self.engine = await connect_engine(self.url, backend=self.backend)
        options = {"reconnect_initial": 0.02, "reconnect_max": 0.2, "poll_interval": 0.1}
        options.update(self.kwargs)
        self.sub = KvEventSubscriber(
            self.engine,
            self.index,
            worker_of,
            on_load=lambda w, load: self.loads.append((w, load)),
            **options,
        )
        self.w0 = worker_of(self.engine, 0)
        self.w1 = worker_of(self.engine, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.stop()
        await self.engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vllm", "sglang"])
async def test_engine_sim_index_predicts_its_cache_hits(sim_flags: Any, backend: str) -> None:
    """Two DP ranks with small LRU caches; every request's cached tokens, as the engine reports
    them, equal what the index said the rank held just before: stores, evictions, ranks."""
    sim = sim_flags(
        "--block-size", str(SIM_BS), "--cache-blocks", "60", "--dp-size", "2", backend=backend
    )
    async with SimHarness(sim, dp_size=2) as h:
        h.sub.start()
        await wait_for(lambda: h.index.is_precise(h.w0) or h.sub.mode == "events", "the stream")
        prompts = [sim_prompt(i, 6 + i % 5) for i in range(24)]
        shared = sim_prompt(1000, 4)
        outcomes = []
        for i, ids in enumerate(prompts):
            rank = i % 2
            outcomes.append(await predicted_then_served(h, sim, ids, rank))
            # Back to an earlier conversation (maybe evicted since), and a shared prefix.
            if i >= 3:
                outcomes.append(await predicted_then_served(h, sim, prompts[i - 3], (i - 3) % 2))
            outcomes.append(await predicted_then_served(h, sim, shared + ids[:20], rank))
        assert all(p == s for p, s in outcomes), outcomes
        assert any(s > 0 for _, s in outcomes) and any(s == 0 for _, s in outcomes)
        assert h.index.is_precise(h.w0) and h.index.is_precise(h.w1)
        assert h.index.stats()["blocks_removed"] > 0  # the caches evicted, the index followed
        assert h.sub.loads[h.w1].source == "events"


@pytest.mark.slow
async def test_engine_sim_resume_and_snapshot_after_lost_streams(sim_flags: Any) -> None:
    """The subscriber's connection is cut twice: a short cut resumes from the history; a long
    one (more batches than the history keeps) is resynced with a snapshot. The index predicts
    the engine's hits exactly after each."""
    sim = sim_flags("--block-size", str(SIM_BS), "--cache-blocks", "80", "--kv-history", "8")
    with FaultProxy(("127.0.0.1", sim.port)) as proxy:
        async with SimHarness(sim, url=f"grpc://{proxy.address}") as h:
            h.sub.start()
            await wait_for(lambda: h.sub.mode == "events", "the stream")
            prompts = [sim_prompt(i, 5) for i in range(30)]
            for ids in prompts[:4]:
                await predicted_then_served(h, sim, ids, 0)
            # A short cut: two batches go by, the history holds them.
            proxy.refuse()
            proxy.reset()
            await wait_for(lambda: not h.index.is_precise(h.w0), "approximate mode")
            for ids in prompts[4:6]:
                await sim_generate(sim, ids, 0)
            proxy.pass_through()
            await wait_for(lambda: h.index.is_precise(h.w0), "resumed")
            assert h.sub.counters["snapshots"] == 0 and h.sub.counters["resyncs"] == 0
            for ids in prompts[:8]:
                predicted, served = await predicted_then_served(h, sim, ids, 0)
                assert predicted == served
            # A long cut: more batches than the history keeps.
            proxy.refuse()
            proxy.reset()
            await wait_for(lambda: not h.index.is_precise(h.w0), "approximate mode")
            for ids in prompts[8:24]:
                await sim_generate(sim, ids, 0)
            proxy.pass_through()
            await wait_for(lambda: h.sub.counters["snapshots"] == 1, "the snapshot")
            await wait_for(lambda: h.index.is_precise(h.w0), "precise after the snapshot")
            for ids in prompts[6:30]:
                predicted, served = await predicted_then_served(h, sim, ids, 0)
                assert predicted == served


@pytest.mark.slow
async def test_engine_sim_without_kv_events_is_polled(sim_flags: Any) -> None:
    sim = sim_flags("--no-kv-events", "--dp-size", "2")
    async with SimHarness(sim, dp_size=2) as h:
        h.sub.start()
        await wait_for(lambda: h.sub.mode == "poll", "poll mode")
        await wait_for(lambda: h.w1 in h.sub.loads, "a polled load of rank 1")
        assert h.sub.loads[h.w0].source == "poll"
        assert not h.index.is_precise(h.w0)
