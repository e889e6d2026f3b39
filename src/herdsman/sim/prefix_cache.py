"""A block-granular prefix cache shaped like vLLM's automatic prefix caching.

Only full blocks are cached; each block's key chains the previous block's key, so a block hits
only when everything before it matched too. Entries are evicted least recently used first, and
every walk touches a chain's blocks children first, so a parent is always more recently used than
its children: eviction takes leaves, and the cached blocks of a chain are always a prefix of it.

With `record_events` the cache also keeps each block's parent and token ids and appends what
changed (`BlocksStored`, `BlocksRemoved`, `CACHE_CLEARED`) to `events`, which the scheduler hands
to the KV-event publisher once per step.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import NamedTuple

DEFAULT_BLOCK_SIZE = 16
# Hash seed of a chain's first block (published without a parent).
ROOT_KEY = 0


class BlocksStored(NamedTuple):
    parent: int | None
    keys: list[int]
    # Each block's token ids; array('I') keeps a cached block at ~130 bytes.
    tokens: list[array[int]]


class BlocksRemoved(NamedTuple):
    keys: list[int]


class CacheCleared(NamedTuple):
    pass


CACHE_CLEARED = CacheCleared()
CacheEvent = BlocksStored | BlocksRemoved | CacheCleared


class LiveBlock(NamedTuple):
    key: int
    parent: int | None
    tokens: array[int]


def chain_keys(
    token_ids: Sequence[int],
    block_size: int,
    *,
    start_block: int = 0,
    parent: int = ROOT_KEY,
) -> list[int]:
    """Chained keys of the full blocks of `token_ids` from block `start_block` on.

    `parent` is the key of block `start_block - 1` (ROOT_KEY for the first block). Python's hash
    of an int tuple is deterministic (no PYTHONHASHSEED salting) and a signed 64-bit value, so the
    keys double as the int64 block hashes of the KV events and stay the same across runs.
    """
    keys: list[int] = []
    for start in range(start_block * block_size, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, *token_ids[start : start + block_size]))
        keys.append(parent)
    return keys


class PrefixCache:
    __slots__ = (
        "_blocks",
        "_capacity",
        "block_size",
        "events",
        "hit_tokens",
        "queried_tokens",
    )

    def __init__(
        self,
        capacity_blocks: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        record_events: bool = False,
    ) -> None:
        # key -> (parent key, token ids) when recording events, else None.
        self._blocks: OrderedDict[int, tuple[int | None, array[int]] | None] = OrderedDict()
        self._capacity = capacity_blocks
        self.block_size = block_size
        self.events: list[CacheEvent] | None = [] if record_events else None
        self.hit_tokens = 0
        self.queried_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    @property
    def capacity_tokens(self) -> int:
        return self._capacity * self.block_size

    def keys(
        self, token_ids: Sequence[int], *, start_block: int = 0, parent: int = ROOT_KEY
    ) -> list[int]:
        if self._capacity <= 0:
            return []
        return chain_keys(token_ids, self.block_size, start_block=start_block, parent=parent)

    def cached_blocks(self, keys: Sequence[int]) -> int:
        """Leading blocks of `keys` in the cache, without touching LRU order or hit counters."""
        blocks = self._blocks
        hits = 0
        for key in keys:
            if key not in blocks:
                break
            hits += 1
        return hits

    def lookup(self, prompt_ids: Sequence[int], keys: Sequence[int] | None = None) -> int:
        """Number of leading prompt tokens served from cache (a multiple of the block size).

        `keys` are the prompt's chained keys when the caller already has them.
        """
        self.queried_tokens += len(prompt_ids)
        if self._capacity <= 0:
            return 0
        if keys is None:
            keys = self.keys(prompt_ids)
        # Like vLLM, the last prompt token is always recomputed: the engine needs its logits.
        usable = keys[: (len(prompt_ids) - 1) // self.block_size]
        hits = self.cached_blocks(usable)
        self._touch(usable[:hits])
        cached = hits * self.block_size
        self.hit_tokens += cached
        return cached

    def _touch(self, keys: Sequence[int]) -> None:
        # Children first, so each parent ends up more recently used than its children.
        move_to_end = self._blocks.move_to_end
        for key in reversed(keys):
            move_to_end(key)

    def insert(self, token_ids: Sequence[int], keys: Sequence[int] | None = None) -> None:
        """Cache the full blocks of `token_ids` (`keys`: their chained keys, if known)."""
        if self._capacity <= 0:
            return
        if keys is None:
            keys = self.keys(token_ids)
        blocks = self._blocks
        # The cached blocks of a chain are a prefix of it, so everything after the first miss
        # is new.
        cached = self.cached_blocks(keys)
        new_keys = list(keys[cached:])
        events = self.events
        if new_keys:
            parent = keys[cached - 1] if cached else None
            if events is None:
                for key in reversed(new_keys):
                    blocks[key] = None
            else:
                size = self.block_size
                base = cached * size
                tokens = [
                    array("I", token_ids[base + i * size : base + (i + 1) * size])
                    for i in range(len(new_keys))
                ]
                # Appended children first: the chain's tail is the least recently used part.
                for index in range(len(new_keys) - 1, -1, -1):
                    blocks[new_keys[index]] = (
                        new_keys[index - 1] if index else parent,
                        tokens[index],
                    )
                events.append(BlocksStored(parent, new_keys, tokens))
        self._touch(keys[:cached])
        if len(blocks) > self._capacity:
            removed: list[int] = []
            while len(blocks) > self._capacity:
                removed.append(blocks.popitem(last=False)[0])
            if events is not None:
                events.append(BlocksRemoved(removed))

    def clear(self) -> None:
        self._blocks.clear()
        if self.events is not None:
            self.events.append(CACHE_CLEARED)

    def live_blocks(self) -> Iterator[LiveBlock]:
        """Every cached block, parents before children (needs `record_events`)."""
        # Most recently used first: a parent is always more recently used than its children.
        for key, value in reversed(self._blocks.items()):
            assert value is not None, "live_blocks needs a cache that records events"
            yield LiveBlock(key, value[0], value[1])

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0
