"""A block-granular prefix cache shaped like vLLM's automatic prefix caching.

Only full blocks are cached; each block's key chains the previous block's key, so a block hits
only when everything before it matched too. Entries are evicted least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK_SIZE = 16


def block_keys(token_ids: Sequence[int], max_tokens: int) -> list[int]:
    """Chained keys of the full blocks among the first `max_tokens` ids."""
    keys: list[int] = []
    parent = 0
    # Python's hash of an int tuple is deterministic (no PYTHONHASHSEED salting), which keeps
    # cache behaviour reproducible across runs.
    for start in range(0, max_tokens - BLOCK_SIZE + 1, BLOCK_SIZE):
        parent = hash((parent, *token_ids[start : start + BLOCK_SIZE]))
        keys.append(parent)
    return keys


class PrefixCache:
    __slots__ = ("_blocks", "_capacity", "hit_tokens", "queried_tokens")

    def __init__(self, capacity_blocks: int) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks
        self.hit_tokens = 0
        self.queried_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def capacity_tokens(self) -> int:
        return self._capacity * BLOCK_SIZE

    def lookup(self, prompt_ids: Sequence[int]) -> int:
        """Number of leading prompt tokens served from cache (a multiple of BLOCK_SIZE)."""
        self.queried_tokens += len(prompt_ids)
        if self._capacity <= 0:
            return 0
        # Like vLLM, the last prompt token is always recomputed: the engine needs its logits.
        hits = 0
        blocks = self._blocks
        for key in block_keys(prompt_ids, len(prompt_ids) - 1):
            if key not in blocks:
                break
            blocks.move_to_end(key)
            hits += 1
        cached = hits * BLOCK_SIZE
        self.hit_tokens += cached
        return cached

    def insert(self, token_ids: Sequence[int]) -> None:
        if self._capacity <= 0:
            return
        blocks = self._blocks
        for key in block_keys(token_ids, len(token_ids)):
            if key in blocks:
                blocks.move_to_end(key)
            else:
                blocks[key] = None
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0
