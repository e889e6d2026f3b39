"""A synthetic engine prefix cache that publishes KV events the way vLLM does, and the reference
answer of "how long a prefix of this prompt does it hold" computed by brute force."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from smg_grpc_proto.generated import common_pb2


def engine_hash(salt: int, parent: int | None, tokens: Sequence[int]) -> int:
    """A signed int64 per (engine, parent, tokens), as the servicer reduces vLLM's hashes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(salt.to_bytes(8, "little"))
    h.update(b"-" if parent is None else parent.to_bytes(8, "little", signed=True))
    h.update(b",".join(str(t).encode() for t in tokens))
    return int.from_bytes(h.digest(), "little", signed=True)


def stored(
    blocks: Sequence[tuple[int, Sequence[int]]], parent: int | None, block_size: int, **fields
) -> common_pb2.KvCacheEvent:
    event = common_pb2.KvBlocksStored(
        blocks=[
            common_pb2.KvBlock(block_hash=h, token_ids=list(ids), block_size=block_size)
            for h, ids in blocks
        ],
        **fields,
    )
    if parent is not None:
        event.parent_block_hash = parent
    return common_pb2.KvCacheEvent(stored=event)


def removed(hashes: Sequence[int], **fields) -> common_pb2.KvCacheEvent:
    return common_pb2.KvCacheEvent(
        removed=common_pb2.KvBlocksRemoved(block_hashes=hashes, **fields)
    )


def cleared() -> common_pb2.KvCacheEvent:
    return common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared())


class SynthEngine:
    """Block-granular prefix cache with LRU eviction, publishing stored/removed/cleared events."""

    def __init__(self, block_size: int, capacity: int | None = None, salt: int = 0) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self.salt = salt
        self.blocks: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # hash -> prefix, LRU
        self.by_prefix: dict[tuple[int, ...], int] = {}
        self.parents: dict[int, int | None] = {}
        # Physical copies announced per hash: like vLLM, a prompt whose chain misses a block
        # recomputes (and announces again) every block after it, and each copy is evicted and
        # announced removed on its own.
        self.copies: dict[int, int] = {}

    def cache(self, ids: Sequence[int]) -> list[common_pb2.KvCacheEvent]:
        """The engine ran a prompt: its full blocks are cached (events for the new ones)."""
        bs = self.block_size
        parent: int | None = None
        new: list[tuple[int, Sequence[int]]] = []
        first_parent: int | None = None
        events: list[common_pb2.KvCacheEvent] = []
        for i in range(len(ids) // bs):
            prefix = tuple(ids[: (i + 1) * bs])
            h = self.by_prefix.get(prefix)
            if h is not None and not new:
                self.blocks.move_to_end(h)
            else:
                if h is None:
                    h = engine_hash(self.salt, parent, prefix[-bs:])
                    self.blocks[h] = prefix
                    self.by_prefix[prefix] = h
                    self.parents[h] = parent
                else:
                    self.blocks.move_to_end(h)
                self.copies[h] = self.copies.get(h, 0) + 1
                if not new:
                    first_parent = parent
                new.append((h, prefix[-bs:]))
            parent = h
        if new:
            events.append(stored(new, first_parent, bs))
        if self.capacity is not None and len(self.blocks) > self.capacity:
            victims = []
            while len(self.blocks) > self.capacity:
                h, prefix = self.blocks.popitem(last=False)
                del self.by_prefix[prefix]
                del self.parents[h]
                victims += [h] * self.copies.pop(h)
            events.append(removed(victims))
        return events

    def evict(self, hashes: Sequence[int]) -> list[common_pb2.KvCacheEvent]:
        gone = [h for h in hashes if h in self.blocks]
        victims = []
        for h in gone:
            del self.by_prefix[self.blocks.pop(h)]
            del self.parents[h]
            victims += [h] * self.copies.pop(h)
        return [removed(victims)] if victims else []

    def clear(self) -> list[common_pb2.KvCacheEvent]:
        self.blocks.clear()
        self.by_prefix.clear()
        self.parents.clear()
        self.copies.clear()
        return [cleared()]

    def snapshot_events(self) -> list[common_pb2.KvCacheEvent]:
        """Every live block, parents before children, one stored event each (a relay's
        snapshot), after a cleared event."""
        bs = self.block_size
        events = [cleared()]
        for prefix in sorted(self.by_prefix, key=len):
            h = self.by_prefix[prefix]
            for _ in range(self.copies[h]):
                events.append(stored([(h, prefix[-bs:])], self.parents[h], bs))
        return events

    def cached_prefix(self, ids: Sequence[int]) -> int:
        """Reference answer: the longest cached prefix of ``ids``, in tokens, below len(ids)."""
        bs = self.block_size
        n = 0
        for i in range(max(len(ids) - 1, 0) // bs):
            if tuple(ids[: (i + 1) * bs]) not in self.by_prefix:
                break
            n = (i + 1) * bs
        return n
