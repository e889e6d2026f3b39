"""A SubscribeKvEvents reader for tests, and a model of the state the events describe."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2

from .simproc import SimProcess

WAIT_S = 15.0  # generous: the condition usually holds within milliseconds

Batch = common_pb2.KvEventBatch


class KvReader:
    """Reads one SubscribeKvEvents stream on a thread; tests wait on conditions over it."""

    def __init__(
        self, sim: SimProcess, *, start: int = 0, loads_before_first_batch: bool = False
    ) -> None:
        request = common_pb2.SubscribeKvEventsRequest(
            start_sequence_number=start,
            load_records_before_first_batch=loads_before_first_batch,
        )
        self.call: Any = sim.stub().SubscribeKvEvents(request, timeout=120)
        self.batches: list[Batch] = []
        self.error: grpc.RpcError | None = None
        self._done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for batch in self.call:
                with self._cond:
                    self.batches.append(batch)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            with self._cond:
                self.error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[Batch]], bool], timeout: float = WAIT_S
    ) -> list[Batch]:
        """Everything received once `predicate` holds over it; fails after `timeout`."""
        with self._cond:
            self._cond.wait_for(lambda: self._done or predicate(self.batches), timeout)
            batches = list(self.batches)
        assert predicate(batches), f"stream ended or timed out: {self.error!r}, {batches[-3:]}"
        return batches

    def wait_for_seq(self, seq: int) -> list[Batch]:
        return self.wait_for(lambda batches: last_seq(batches) >= seq)

    def wait_for_error(self) -> grpc.RpcError:
        with self._cond:
            self._cond.wait_for(lambda: self._done, WAIT_S)
        assert self.error is not None
        return self.error

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(timeout=WAIT_S)


def event_batches(batches: Sequence[Batch]) -> list[Batch]:
    """The publisher's batches (and snapshot chunks), without load_only ones."""
    return [b for b in batches if not b.load.load_only]


def last_seq(batches: Sequence[Batch]) -> int:
    return max((b.sequence_number for b in event_batches(batches)), default=0)


def stored_events(batches: Sequence[Batch]) -> Iterator[common_pb2.KvBlocksStored]:
    for batch in event_batches(batches):
        for event in batch.events:
            if event.WhichOneof("data") == "stored":
                yield event.stored


def without_load(batch: Batch) -> Batch:
    copy = Batch()
    copy.CopyFrom(batch)
    copy.ClearField("load")
    return copy


@dataclass
class KvState:
    """Per rank: block hash -> (parent hash or None, token ids), as the events say."""

    ranks: dict[int, dict[int, tuple[int | None, tuple[int, ...]]]] = field(default_factory=dict)

    def apply(self, batch: Batch, *, strict: bool = True) -> None:
        """Apply one batch; `strict`: every stored chain's parent must already be known."""
        blocks = self.ranks.setdefault(batch.dp_rank, {})
        for event in batch.events:
            kind = event.WhichOneof("data")
            if kind == "cleared":
                blocks.clear()
            elif kind == "removed":
                for block_hash in event.removed.block_hashes:
                    del blocks[block_hash]
            elif kind == "stored":
                stored = event.stored
                parent = stored.parent_block_hash if stored.HasField("parent_block_hash") else None
                if strict and parent is not None:
                    assert parent in blocks, "a child arrived before its parent"
                for block in stored.blocks:
                    blocks[block.block_hash] = (parent, tuple(block.token_ids))
                    parent = block.block_hash

    def apply_all(self, batches: Sequence[Batch]) -> KvState:
        for batch in event_batches(batches):
            self.apply(batch)
        return self
