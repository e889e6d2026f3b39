"""The KV-event publisher of one engine-sim process: numbering, bounded history, snapshots.

Every DP rank's scheduler hands its cache changes to `KvEventHub.publish` once per step; each
call becomes one batch with the next sequence number. The numbering is one sequence for the whole
process (its one SubscribeKvEvents stream), with each batch tagged by its `dp_rank`, so a single
`start_sequence_number` can resume every rank at once.

Raw events are kept, not protos: nothing is built while nobody subscribes, and a batch's proto is
built once, on its first send, and shared by every subscriber. The history is bounded in batches
and in blocks; a subscriber whose cursor it no longer reaches gets a snapshot of the live blocks
instead (see `snapshot`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from smg_grpc_proto.generated import common_pb2

from herdsman.sim.load_report import LoadSnapshot, engine_load
from herdsman.sim.prefix_cache import (
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    LiveBlock,
    PrefixCache,
)

# Blocks per snapshot chunk (about 100 KB of proto), unless the history is too short to number
# that many chunks.
SNAPSHOT_CHUNK_BLOCKS = 512
# Batch protos kept built behind the newest batch (live subscribers send only recent ones).
_PROTO_CACHE_BATCHES = 64

_TIER = common_pb2.KV_CACHE_TIER_DEVICE
_LOCALITY = common_pb2.KV_CACHE_LOCALITY_LOCAL
# vLLM's name for device memory; the sim models a single full-attention KV cache group.
_MEDIUM = "GPU"
_GROUP = 0


class KvRank(Protocol):
    """What the hub reads from one DP rank's scheduler."""

    cache: PrefixCache

    def load(self) -> LoadSnapshot: ...


class Subscriber(Protocol):
    def wake(self) -> None: ...

    def mark_dirty(self, rank: int) -> None: ...


@dataclass(slots=True)
class HistoryEntry:
    seq: int
    rank: int
    timestamp: float
    events: list[CacheEvent]
    first_event_id: int
    blocks: int
    proto: common_pb2.KvEventBatch | None = None


def stored_proto(
    parent: int | None, blocks: Sequence[tuple[int, Sequence[int]]], block_size: int
) -> common_pb2.KvBlocksStored:
    stored = common_pb2.KvBlocksStored(
        tier=_TIER, medium=_MEDIUM, group_idx=_GROUP, locality=_LOCALITY
    )
    if parent is not None:
        stored.parent_block_hash = parent
    add = stored.blocks.add
    for key, tokens in blocks:
        add(block_hash=key, token_ids=tokens, block_size=block_size)
    return stored


def removed_proto(keys: Sequence[int]) -> common_pb2.KvBlocksRemoved:
    return common_pb2.KvBlocksRemoved(
        block_hashes=keys, tier=_TIER, medium=_MEDIUM, group_idx=_GROUP, locality=_LOCALITY
    )


def event_proto(event: CacheEvent, event_id: int, block_size: int) -> common_pb2.KvCacheEvent:
    if isinstance(event, BlocksStored):
        stored = stored_proto(
            event.parent, list(zip(event.keys, event.tokens, strict=True)), block_size
        )
        return common_pb2.KvCacheEvent(event_id=event_id, stored=stored)
    if isinstance(event, BlocksRemoved):
        return common_pb2.KvCacheEvent(event_id=event_id, removed=removed_proto(event.keys))
    return common_pb2.KvCacheEvent(event_id=event_id, cleared=common_pb2.KvCacheCleared())


def _stored_runs(blocks: Sequence[LiveBlock], block_size: int) -> list[common_pb2.KvCacheEvent]:
    """Stored events listing `blocks` (parents first), one event per run of a chain."""
    events: list[common_pb2.KvCacheEvent] = []
    run: list[tuple[int, Sequence[int]]] = []
    run_parent: int | None = None
    previous: int | None = None
    for block in blocks:
        if run and block.parent != previous:
            events.append(common_pb2.KvCacheEvent(stored=stored_proto(run_parent, run, block_size)))
            run = []
        if not run:
            run_parent = block.parent
        run.append((block.key, block.tokens))
        previous = block.key
    if run:
        events.append(common_pb2.KvCacheEvent(stored=stored_proto(run_parent, run, block_size)))
    return events


class KvEventHub:
    def __init__(
        self,
        *,
        block_size: int,
        history_batches: int,
        history_blocks: int,
        heartbeat_s: float,
    ) -> None:
        self.block_size = block_size
        self.heartbeat_s = heartbeat_s
        self.ranks: list[KvRank] = []
        # The last sequence number published (0: none yet; the first batch is 1).
        self.seq = 0
        self.sample = 0
        self._history: deque[HistoryEntry] = deque()
        self._history_limit = history_batches
        self._history_block_limit = history_blocks
        self._history_block_count = 0
        self._next_event_id = 1
        self._subscribers: set[Subscriber] = set()

    def attach(self, ranks: Sequence[KvRank]) -> None:
        self.ranks = list(ranks)
        # A snapshot needs a chunk per rank, numbered within the history's reach.
        self._history_limit = max(self._history_limit, len(self.ranks))

    @property
    def rank_count(self) -> int:
        return len(self.ranks)

    # ---- publishing ------------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return bool(self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, rank: int, events: list[CacheEvent]) -> None:
        self.seq += 1
        # The history's memory is the stored blocks' token ids.
        blocks = sum(len(e.keys) for e in events if isinstance(e, BlocksStored))
        entry = HistoryEntry(self.seq, rank, time.time(), events, self._next_event_id, blocks)
        self._next_event_id += len(events)
        history = self._history
        history.append(entry)
        self._history_block_count += blocks
        while len(history) > 1 and (
            len(history) > self._history_limit
            or self._history_block_count > self._history_block_limit
        ):
            self._history_block_count -= history.popleft().blocks
        stale = self.entry(self.seq - _PROTO_CACHE_BATCHES)
        if stale is not None:
            stale.proto = None
        for subscriber in self._subscribers:
            subscriber.wake()

    def load_changed(self, rank: int) -> None:
        """The rank's load moved without a KV event: subscribers owe it a load_only batch."""
        for subscriber in self._subscribers:
            subscriber.mark_dirty(rank)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    # ---- reading ---------------------------------------------------------------------------

    def entry(self, seq: int) -> HistoryEntry | None:
        history = self._history
        if not history:
            return None
        index = seq - history[0].seq
        if index < 0 or seq > self.seq:
            return None
        return history[index]

    def replay_reaches(self, cursor: int) -> bool:
        """Whether the history holds every batch after `cursor` (an up-to-date one included)."""
        return cursor == self.seq or self.entry(cursor + 1) is not None

    def batch_proto(self, entry: HistoryEntry) -> common_pb2.KvEventBatch:
        """The batch's events as a proto, built on first use (without its load record)."""
        proto = entry.proto
        if proto is None:
            block_size = self.block_size
            proto = common_pb2.KvEventBatch(
                sequence_number=entry.seq,
                timestamp=entry.timestamp,
                dp_rank=entry.rank,
                events=[
                    event_proto(event, entry.first_event_id + index, block_size)
                    for index, event in enumerate(entry.events)
                ],
            )
            if entry.seq > self.seq - _PROTO_CACHE_BATCHES:  # live subscribers share it
                entry.proto = proto
        return proto

    def load_record(self, rank: int, *, load_only: bool, telemetry: bool) -> common_pb2.EngineLoad:
        self.sample += 1
        return engine_load(
            self.ranks[rank].load(), self.sample, load_only=load_only, telemetry=telemetry
        )

    def snapshot(self, limit: int) -> list[common_pb2.KvEventBatch]:
        """The live blocks of every rank as KvSnapshotChunk batches, without load records.

        One snapshot covers all ranks: `count` chunks with consecutive sequence numbers ending at
        the current one, grouped by rank; each rank's first chunk begins with a KvCacheCleared,
        then its blocks as Stored events, parents before children (synthesized: event_id 0).
        At most `limit` chunks, so that a subscriber whose cursor is more than `limit` behind
        sees every chunk numbered past it.
        """
        ranks = self.ranks
        if self.seq < len(ranks):
            # Too few sequence numbers to give every rank a chunk: spend some on empty batches.
            for _ in range(len(ranks) - self.seq):
                self.publish(0, [])
        limit = max(min(limit, self.seq), len(ranks))
        per_rank = [list(rank.cache.live_blocks()) for rank in ranks]
        total = sum(len(blocks) for blocks in per_rank)
        spare = limit - len(ranks)
        if spare > 0:
            chunk_blocks = max(SNAPSHOT_CHUNK_BLOCKS, math.ceil(total / spare))
        else:
            chunk_blocks = max(total, 1)
        pieces: list[tuple[int, list[LiveBlock]]] = []
        for rank, blocks in enumerate(per_rank):
            pieces.append((rank, blocks[:chunk_blocks]))
            for start in range(chunk_blocks, len(blocks), chunk_blocks):
                pieces.append((rank, blocks[start : start + chunk_blocks]))
        count = len(pieces)
        first_seq = self.seq - count + 1
        now = time.time()
        batches: list[common_pb2.KvEventBatch] = []
        previous_rank = -1
        for index, (rank, blocks) in enumerate(pieces):
            events: list[common_pb2.KvCacheEvent] = []
            if rank != previous_rank:
                events.append(common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared()))
                previous_rank = rank
            events.extend(_stored_runs(blocks, self.block_size))
            batches.append(
                common_pb2.KvEventBatch(
                    sequence_number=first_seq + index,
                    timestamp=now,
                    dp_rank=rank,
                    events=events,
                    snapshot=common_pb2.KvSnapshotChunk(
                        index=index, count=count, blocks=total, unknown_before=0
                    ),
                )
            )
        return batches
