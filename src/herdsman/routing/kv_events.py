"""One engine's KV-event stream, feeding the prefix index (kv_index.py) and its workers' loads.

A subscriber per engine connection consumes ``SubscribeKvEvents`` and applies each batch to the
worker of the batch's data-parallel rank. It keeps the stream's sequence number as its cursor:

- stream lost: the engine's workers turn approximate (their last known blocks stay, routed
  prompts are recorded beside them) and the subscriber reconnects with backoff, resuming from
  its cursor; the first in-sequence batch (or a heartbeat repeating the cursor) confirms the
  resume and makes them precise again.
- a gap (a batch past cursor + 1): one reconnect from the cursor, in case the engine's replay
  fills it; if it does not, a resync from 0.
- a fresh start (no cursor: the first subscription, a resync, or an engine whose numbering
  restarted): the workers are reset; they are complete, hence precise, only when the stream
  starts at the engine's first batch (sequence 0 or 1) or with a snapshot.
- snapshot chunks: a resync of the chunk's rank (cleared, then every live block), applied in
  slices so that a 100k-block snapshot does not hold the event loop; the rank is complete when
  the last chunk arrives, unless the snapshot says part of the engine's history is unknown.
- UNIMPLEMENTED (an engine that publishes no events): its workers stay approximate for good and
  their loads come from polling GetLoads.

Loads: the ``EngineLoad`` record on each batch (``source="events"``); GetLoads polling every
``poll_interval`` whenever no record arrived for ``3 * poll_interval`` (stream down, an older
servicer without records, or no events at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smg_grpc_proto.generated import common_pb2

from herdsman.engines.base import EngineClient, EngineError
from herdsman.routing.load import WorkerLoad

if TYPE_CHECKING:  # built only for cache-aware routing; it imports numpy
    from herdsman.routing.kv_index import KvIndex

log = logging.getLogger(__name__)

WorkerIdOf = Callable[[EngineClient, int], str]
LoadSink = Callable[[str, WorkerLoad], None]


def _rank(batch: common_pb2.KvEventBatch) -> int:
    return batch.dp_rank if batch.HasField("dp_rank") else 0


def event_load(load: common_pb2.EngineLoad, now: float) -> WorkerLoad:
    """An EngineLoad record of the KV-event stream as a WorkerLoad."""
    uncached = load.waiting_uncached_tokens if load.HasField("waiting_uncached_tokens") else None
    return WorkerLoad(
        running=load.running_requests,
        waiting=load.waiting_requests,
        waiting_uncached_tokens=uncached,
        token_usage=load.token_usage,
        max_running=load.max_running_requests,
        cache_hit_rate=load.cache_hit_rate if load.HasField("cache_hit_rate") else None,
        updated_at=now - load.age_ms / 1000,
        source="events",
    )


class KvEventSubscriber:
    def __init__(
        self,
        engine: EngineClient,
        index: KvIndex | None,
        worker_id: WorkerIdOf,
        *,
        on_load: LoadSink | None = None,
        dp_size: int = 1,
        poll_interval: float = 2.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 10.0,
        slice_blocks: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``worker_id(engine, dp_rank)`` names the worker of each rank; ``on_load(worker_id,
        load)`` is told every load record. ``index`` None: only loads are wanted (the stream's
        load records, or polling), its blocks are not indexed. ``slice_blocks``: blocks applied
        between yields to the event loop."""
        self._engine = engine
        self._index = index
        self._worker_id = worker_id
        self._on_load = on_load
        self._poll_interval = poll_interval
        self._load_stale = 3 * poll_interval
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._slice_blocks = slice_blocks
        self._clock = clock
        self._cursor: int | None = None
        self._complete: dict[int, bool] = {}  # rank -> its blocks are all known
        self._stream_complete = False  # what the last fresh start knew of every rank
        self._live = False  # the stream is up and in sequence
        self._resuming = False  # reconnected with a cursor, not yet confirmed in sequence
        self._after_gap = False
        self._delivered = False  # the current stream delivered something
        self._snapshot_ranks: set[int] | None = None  # ranks of the snapshot being applied
        self._ranks: dict[int, str] = {}
        for rank in range(dp_size):
            self._wid(rank)
        self._samples: dict[int, int] = {}  # rank -> last load sample on this stream
        self._last_event_load = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self.mode = "stopped"  # starting | events | reconnecting | poll | stopped
        self.loads: dict[str, WorkerLoad] = {}
        self.counters = dict.fromkeys(
            (
                "connects",
                "stream_errors",
                "batches",
                "duplicates",
                "gaps",
                "resyncs",
                "snapshots",
                "event_loads",
                "polls",
                "poll_errors",
            ),
            0,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks:
            return
        self.mode = "starting"
        name = getattr(self._engine, "address", "engine")
        self._tasks = [
            asyncio.create_task(self._run(), name=f"kv-events {name}"),
            asyncio.create_task(self._poll_loop(), name=f"kv-loads {name}"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.mode = "stopped"
        self._live = False
        self._publish()

    @property
    def last_sequence(self) -> int | None:
        return self._cursor

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "last_sequence": self._cursor,
            "precise": {
                wid: self._index is not None and self._index.is_precise(wid)
                for wid in self._ranks.values()
            },
            **self.counters,
        }

    # -- the stream ----------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._reconnect_initial
        while True:
            start = self._cursor if self._cursor is not None else 0
            self._resuming = self._cursor is not None
            self._delivered = False
            try:
                outcome = await self._consume(start)
            except EngineError as exc:
                if exc.code == "unimplemented":
                    log.info("%s publishes no KV events: approximate routing, polled loads", self)
                    self.mode = "poll"
                    self._live = False
                    self._publish()
                    return
                self.counters["stream_errors"] += 1
                log.debug("%s: KV-event stream failed: %s", self, exc)
                outcome = "error"
            except Exception:
                # A batch we could not apply leaves the index in doubt: start over from 0.
                log.exception("%s: KV-event stream handling failed; resyncing", self)
                self.counters["stream_errors"] += 1
                self._cursor = None
                outcome = "error"
            self._live = False
            self._publish()
            self.mode = "reconnecting"
            if outcome in ("gap", "resync"):
                continue  # recovery, not failure: reconnect at once
            if self._delivered:
                delay = self._reconnect_initial  # it worked a while: a drop, not a dead engine
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._reconnect_max)

    async def _consume(self, start: int) -> str:
        """Read one stream to its end; returns why it ended."""
        batches = self._engine.subscribe_kv_events(start)
        self.counters["connects"] += 1
        self._samples = {}
        self._snapshot_ranks = None
        first = True  # no event batch yet on this stream
        try:
            async for batch in batches:
                self._delivered = True
                self.mode = "events"
                has_load = batch.HasField("load")
                if has_load:
                    self._take_load(batch)
                    if batch.load.load_only:
                        # A heartbeat repeats the stream's last sequence: ours, if nothing was
                        # missed while we were away.
                        cursor = self._cursor
                        if self._resuming and cursor and batch.sequence_number == cursor:
                            self._resumed()
                        continue
                if batch.HasField("snapshot"):
                    if self._cursor is None and first:
                        self._fresh_start(complete=False)
                    await self._apply_snapshot_chunk(batch)
                    first = False
                    continue
                seq = batch.sequence_number
                if self._cursor is None:
                    self._fresh_start(complete=seq <= 1)
                elif seq <= self._cursor:
                    if not (first and seq < self._cursor):
                        self.counters["duplicates"] += 1  # a replay overlapping what we have
                        first = False
                        continue
                    # The stream restarted below our cursor: a new engine behind the address.
                    log.info("%s: KV-event sequence went back to %d; resyncing", self, seq)
                    self.counters["resyncs"] += 1
                    self._fresh_start(complete=seq <= 1)
                elif seq > self._cursor + 1:
                    self.counters["gaps"] += 1
                    if self._after_gap:
                        log.info("%s: KV events after %d lost; resyncing", self, self._cursor)
                        self.counters["resyncs"] += 1
                        self._after_gap = False
                        self._cursor = None
                        return "resync"
                    self._after_gap = True
                    return "gap"
                elif self._resuming:
                    self._resumed()
                first = False
                self._after_gap = False
                await self._apply(batch)
                self._cursor = seq
        finally:
            await batches.aclose()
        return "ended"

    async def _apply(self, batch: common_pb2.KvEventBatch) -> None:
        worker_id = self._wid(_rank(batch))
        if self._index is None:
            self.counters["batches"] += 1
            return
        done = 0
        apply = self._index.apply_event
        for event in batch.events:
            done += apply(worker_id, event)
            if done >= self._slice_blocks:
                done = 0
                await asyncio.sleep(0)
        self.counters["batches"] += 1

    async def _apply_snapshot_chunk(self, batch: common_pb2.KvEventBatch) -> None:
        """One chunk of a snapshot (of one rank or of all, chunks grouped by rank): each rank
        in it is reset at its first chunk and complete after the last chunk."""
        chunk = batch.snapshot
        rank = _rank(batch)
        if chunk.index == 0 or self._snapshot_ranks is None:
            self._snapshot_ranks = set()
            self._live = True
            self._resuming = False
        if rank not in self._snapshot_ranks:
            # Its first chunk starts with a cleared event; reset anyway, whatever comes.
            self._snapshot_ranks.add(rank)
            if self._index is not None:
                self._index.reset_worker(self._wid(rank))
            self._complete[rank] = False
            self._publish()
        await self._apply(batch)
        self._cursor = batch.sequence_number
        if chunk.index + 1 >= chunk.count:
            self.counters["snapshots"] += 1
            # Blocks stored before the relay's record began and never removed are unknown.
            for done in self._snapshot_ranks:
                self._complete[done] = chunk.unknown_before == 0
            self._snapshot_ranks = None
            self._publish()
            # The resets' deferred cleanup: done now rather than on later requests' time.
            while self._index is not None and self._index.maintain(self._slice_blocks):
                await asyncio.sleep(0)

    def _fresh_start(self, complete: bool) -> None:
        """What the workers held is unknown: start them empty."""
        for rank, worker_id in self._ranks.items():
            if self._index is not None:
                self._index.reset_worker(worker_id)
            self._complete[rank] = complete
        self._stream_complete = complete
        self._live = True
        self._resuming = False
        self._publish()

    def _resumed(self) -> None:
        self._resuming = False
        self._live = True
        self._publish()

    def _publish(self) -> None:
        """Tell the index which of this engine's workers it knows exactly."""
        if self._index is None:
            return
        for rank, worker_id in self._ranks.items():
            self._index.set_precise(worker_id, self._live and self._complete.get(rank, False))

    def _wid(self, rank: int) -> str:
        worker_id = self._ranks.get(rank)
        if worker_id is None:
            worker_id = self._ranks[rank] = self._worker_id(self._engine, rank)
            # A rank first seen mid-stream shares what the stream knows of the others.
            self._complete[rank] = self._live and self._stream_complete
        return worker_id

    # -- loads ---------------------------------------------------------------------------------
    def _take_load(self, batch: common_pb2.KvEventBatch) -> None:
        load = batch.load
        rank = _rank(batch)
        last = self._samples.get(rank)
        if last is not None and load.sample and load.sample <= last:
            return  # an older record than one we have
        self._samples[rank] = load.sample
        now = self._clock()
        self._last_event_load = now
        self.counters["event_loads"] += 1
        self._emit_load(rank, event_load(load, now))

    def _emit_load(self, rank: int, load: WorkerLoad) -> None:
        worker_id = self._wid(rank)
        self.loads[worker_id] = load
        if self._on_load is not None:
            self._on_load(worker_id, load)

    async def _poll_loop(self) -> None:
        while True:
            asked = self._clock()
            if self.mode == "poll" or asked - self._last_event_load > self._load_stale:
                try:
                    loads = await self._engine.get_loads()
                except EngineError as exc:
                    self.counters["poll_errors"] += 1
                    log.debug("%s: GetLoads failed: %s", self, exc)
                else:
                    self.counters["polls"] += 1
                    # A record that came on the stream meanwhile is newer than this answer.
                    if self._last_event_load < asked:
                        for rank, load in loads:
                            self._emit_load(rank, load)
            await asyncio.sleep(self._poll_interval)

    def __repr__(self) -> str:
        return f"KvEventSubscriber({getattr(self._engine, 'address', '?')})"
