"""One SubscribeKvEvents stream: replay or snapshot, then live batches and load records.

Where a subscriber starts (`start_sequence_number` is the last batch it has):
- the history holds every batch after it: those batches, then live ones;
- 0, and the history still reaches back to the first batch: the whole history (the engine's
  whole life), then live ones;
- 0 once the history no longer reaches back, a cursor the history no longer reaches, or one ahead
  of the last batch (a previous incarnation's): a snapshot of the live blocks (see
  `KvEventHub.snapshot`), then live batches from the one after it.

Every batch carries the rank's current EngineLoad. A rank whose load moved without a KV event
gets a `load_only` batch repeating the stream's last sequence number (coalesced: one per rank
however often it moved before the stream could send), and so does a rank the stream has sent
nothing about for a heartbeat interval. Before the publisher's first batch (sequence 0) load
records flow only to subscribers that asked for them (`load_records_before_first_batch`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from smg_grpc_proto.generated import common_pb2

from herdsman.sim.kv_events import KvEventHub

Write = Callable[[common_pb2.KvEventBatch], Awaitable[None]]

NOT_ENABLED = (
    "KV cache events not enabled: engine-sim was started with --no-kv-events "
    "(like vLLM without --kv-events-config)"
)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class KvSubscription:
    def __init__(self, hub: KvEventHub, start: int, loads_before_first_batch: bool) -> None:
        self._hub = hub
        self._start = start
        self._loads_before_first = loads_before_first_batch
        ranks = hub.rank_count
        # The last sequence number this stream sent (or the subscriber already had).
        self.cursor = 0
        self._dirty: set[int] = set(range(ranks))
        self._last_sent = [0.0] * ranks
        # Ranks whose first record on this stream is still to go (it carries the telemetry).
        self._telemetry_due: set[int] = set(range(ranks))
        self._wakeup: asyncio.Future[None] | None = None

    # ---- notifications from the hub (called from the scheduler's task) --------------------

    def wake(self) -> None:
        if self._wakeup is not None:
            _wake(self._wakeup)

    def mark_dirty(self, rank: int) -> None:
        self._dirty.add(rank)
        self.wake()

    # ---- the stream ------------------------------------------------------------------------

    def _opening(self) -> list[common_pb2.KvEventBatch]:
        """Decide where the stream starts; returns the snapshot to send first, if any."""
        hub = self._hub
        start = self._start
        if start == 0:
            if hub.seq == 0 or hub.replay_reaches(0):
                return []  # the cursor stays 0: the whole history replays
            return hub.snapshot(hub.seq)
        if start <= hub.seq and hub.replay_reaches(start):
            self.cursor = start
            return []
        # Too old for the history, or ahead of it (the engine restarted since).
        limit = hub.seq - start if start < hub.seq else hub.seq
        return hub.snapshot(limit)

    async def run(self, write: Write) -> None:
        for batch in self._opening():
            await self._send(write, batch, batch.dp_rank)
        while True:
            await self._drain(write)
            await self._sleep(self._next_heartbeat())

    async def _drain(self, write: Write) -> None:
        hub = self._hub
        while True:
            while self.cursor < hub.seq:
                entry = hub.entry(self.cursor + 1)
                if entry is None:
                    # This stream fell further behind than the history reaches.
                    for batch in hub.snapshot(hub.seq - self.cursor):
                        await self._send(write, batch, batch.dp_rank)
                    continue
                batch = common_pb2.KvEventBatch()
                batch.CopyFrom(hub.batch_proto(entry))
                await self._send(write, batch, entry.rank)
            if not self._may_send_load_only():
                return
            now = time.monotonic()
            heartbeat = hub.heartbeat_s
            due = set(self._dirty)
            if heartbeat > 0:
                due |= {r for r, at in enumerate(self._last_sent) if now - at >= heartbeat}
            if not due:
                return
            self._dirty = set()
            for rank in sorted(due):
                await self._send_load_only(write, rank)

    def _may_send_load_only(self) -> bool:
        # Sequence 0 is no batch of the publisher's: only subscribers that asked take it.
        return self.cursor > 0 or self._loads_before_first

    def _next_heartbeat(self) -> float | None:
        if self._hub.heartbeat_s <= 0 or not self._may_send_load_only():
            return None
        return min(self._last_sent) + self._hub.heartbeat_s

    async def _send(self, write: Write, batch: common_pb2.KvEventBatch, rank: int) -> None:
        telemetry = rank in self._telemetry_due
        batch.load.CopyFrom(self._hub.load_record(rank, load_only=False, telemetry=telemetry))
        # The record is the rank's current load: a pending load_only is moot (a change while
        # the write waits marks the rank again).
        self._dirty.discard(rank)
        self._telemetry_due.discard(rank)
        await write(batch)
        self.cursor = batch.sequence_number
        self._last_sent[rank] = time.monotonic()

    async def _send_load_only(self, write: Write, rank: int) -> None:
        batch = common_pb2.KvEventBatch(
            sequence_number=self.cursor,
            timestamp=time.time(),
            dp_rank=rank,
            load=self._hub.load_record(rank, load_only=True, telemetry=True),
        )
        self._telemetry_due.discard(rank)
        await write(batch)
        self._last_sent[rank] = time.monotonic()

    async def _sleep(self, deadline: float | None) -> None:
        if self._dirty and self._may_send_load_only():
            return
        if self.cursor < self._hub.seq:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._wakeup = future
        handle = None
        if deadline is not None:
            handle = loop.call_later(max(deadline - time.monotonic(), 0.0), _wake, future)
        try:
            await future
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()


async def serve_kv_events(
    hub: KvEventHub | None,
    request: common_pb2.SubscribeKvEventsRequest,
    context: grpc.aio.ServicerContext,
) -> None:
    if hub is None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_ENABLED)
        return
    subscription = KvSubscription(
        hub, request.start_sequence_number, request.load_records_before_first_batch
    )
    hub.subscribe(subscription)
    try:
        # Headers go out at once so a client awaiting the call does not wait for a batch.
        await context.send_initial_metadata(())
        await subscription.run(context.write)
    finally:
        hub.unsubscribe(subscription)
