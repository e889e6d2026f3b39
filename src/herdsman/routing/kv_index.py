"""The prefix index of one model: which workers hold which KV blocks, from the engines' own
KV events (precise) or from the requests routed to them (approximate).

Blocks are keyed by content (kv_hash.py: a hash of the whole token prefix up to and including
the block), so a prompt's blocks are computed from its token ids alone and ``match`` is a walk
down the prompt's keys. Each key maps to a bitmask of worker *slots*; a worker has one slot for
its precise blocks and one for its approximate entries. A worker whose state must be thrown away
(an engine's ``cleared``, a resync, removal from the fleet) gets fresh slots at once and its old
bits are cleared later, a slice at a time (``maintain``), so no call walks a whole worker's
blocks and stale bits are invisible meanwhile (``match`` only reads current slots).

Per worker, the engine's block hash maps to (content key, depth), so that a stored block's key
is its parent's extended by its tokens, and a removal finds the key it drops.

Memory is bounded by ``max_blocks`` (worker-block pairs). Past it, the worker holding the most
blocks stops indexing its deepest ones (a per-worker depth limit, lowered until the index fits):
the tails of long unique conversations go first, shared and early blocks (system prompts, first
turns) stay, and no chain loses a block in its middle, which would orphan everything below it.
Limits are lifted once the index is back under three quarters of its cap.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from smg_grpc_proto.generated import common_pb2

from herdsman.routing.kv_hash import (
    MASK64,
    chain_keys,
    extra_term,
    kv_namespace,
    namespace_seed,
    prompt_keys,
)

_NO_LIMIT = 1 << 62
# The fields of a worker's block record (see _Worker.by_engine).
_DEPTH_MASK = (1 << 32) - 1
_PARENT_SHIFT = 96
_CHILD = 1 << 160
# Cache specs whose blocks are a reusable prefix (vLLM's KVCacheSpecKind values).
_FULL_ATTENTION = frozenset({"", "full_attention", "mla_attention", "sink_full_attention"})
# Media (vLLM: GPU/CPU/STORAGE; SGLang: GPU/CPU_PINNED/DISK/EXTERNAL) that are not the device.
_OFF_DEVICE = frozenset({"CPU", "CPU_PINNED", "HOST", "STORAGE", "DISK", "EXTERNAL"})
_DEVICE_TIERS = (common_pb2.KV_CACHE_TIER_UNSPECIFIED, common_pb2.KV_CACHE_TIER_DEVICE)
# Cleanup steps done after each mutating call, beyond twice the blocks it touched: enough that
# deferred work always finishes, little enough to stay invisible in a request's latency.
_MAINTAIN_STEPS = 256


class PromptBlocks:
    """A prompt's block keys, computed once and usable for both ``match`` and ``record_routed``."""

    __slots__ = ("keys", "n_tokens")

    def __init__(self, keys: list[int], n_tokens: int) -> None:
        self.keys = keys  # every full block of the prompt
        self.n_tokens = n_tokens


Prompt = Sequence[int] | np.ndarray | PromptBlocks


class _Generation:
    """A worker's approximate entries recorded since a point in time, under one slot bit: the
    blocks of every prompt routed there, so always closed under prefixes."""

    __slots__ = ("at", "keys", "slot")

    def __init__(self, slot: int, at: float) -> None:
        self.slot = slot
        self.keys: set[int] = set()
        self.at = at  # the last time a prompt was recorded in it


class _Worker:
    __slots__ = (
        "by_engine",
        "copies",
        "count",
        "depth_limit",
        "depths",
        "generation",
        "key_refs",
        "old",
        "orphan_children",
        "orphans",
        "precise",
        "slot",
        "visible",
        "worker_id",
        "young",
    )

    def __init__(self, worker_id: str, slot: int) -> None:
        self.worker_id = worker_id
        self.slot = slot  # bit of this worker's precise blocks in KvIndex._held
        self.generation = 0
        self.precise = False
        # Approximate entries (KvIndex._approx), in two generations: prompts are recorded in
        # the young one; when it is full it becomes the old one and the old one is dropped
        # whole (LRU's second-chance approximation: what is routed again moves to the young).
        self.young: _Generation | None = None
        self.old: _Generation | None = None
        self._fresh()

    def _fresh(self) -> None:
        # engine block hash -> its record packed in one int (a third of a tuple's memory):
        # content key | depth << 64 | parent's engine hash << 96 | children held << 160
        self.by_engine: dict[int, int] = {}
        # engine block hash -> physical copies beyond the first (engines may cache one block
        # twice and announce, then remove, each copy)
        self.copies: dict[int, int] = {}
        # content key -> engine hashes beyond the first that map to it
        self.key_refs: dict[int, int] = {}
        # Blocks held whose parent is not (a removed block's children): while there are none,
        # what the worker holds of any prompt is a prefix of it, and match() can bisect.
        self.orphans = 0
        self.orphan_children: dict[int, int] = {}  # removed engine hash -> its children held
        self.depths: list[int] = []  # blocks held per depth
        self.count = 0  # len(by_engine)
        self.visible = 0  # blocks above depth_limit: those match() sees
        self.depth_limit = _NO_LIMIT

    def generations(self) -> list[_Generation]:
        return [g for g in (self.young, self.old) if g is not None]

    @property
    def approx_entries(self) -> int:
        return sum(len(g.keys) for g in self.generations())


@dataclass(slots=True)
class _Retire:
    """Clear one retired slot's bit from a table, then free the slot."""

    table: dict[int, int]
    slot: int
    keys: Iterator[int]


@dataclass(slots=True)
class _Evict:
    """Drop a worker's blocks at or below its depth limit."""

    worker: _Worker
    generation: int
    hashes: Iterator[int]


class KvIndex:
    def __init__(
        self,
        block_size: int,
        *,
        max_blocks: int = 1_000_000,
        max_approx_blocks: int = 32_768,
        approx_ttl: float = 600.0,
        speculative_ttl: float = 0.0,
        kv_group: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_blocks``: cap on indexed (worker, block) pairs. ``max_approx_blocks``: bound
        of each worker's approximate entries (two generations of half of it each), which expire
        when nothing was routed to the worker for ``approx_ttl`` seconds. ``speculative_ttl``
        > 0 also records routed prompts for precise workers, for that long: the blocks a
        request will store before its events arrive (only a prompt's deepest block keys, so
        recording is O(1); a later prompt extending it finds them by its own keys at that
        depth). ``kv_group``: the engine's KV cache group to index (the full-attention one)."""
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.max_approx_blocks = max_approx_blocks
        self.approx_ttl = approx_ttl
        self.speculative_ttl = speculative_ttl
        self.kv_group = kv_group
        self._clock = clock
        self._held: dict[int, int] = {}  # content key -> precise holder slots
        self._approx: dict[int, int] = {}  # content key -> approximate holder slots
        # Speculative entries: a routed prompt's deepest key -> {worker id: expiry}, and the
        # same in expiry order (one TTL for all, so insertion order is expiry order).
        self._recent: dict[int, dict[str, float]] = {}
        self._recent_order: deque[tuple[float, int, str]] = deque()
        self._workers: dict[str, _Worker] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._jobs: deque[_Retire | _Evict] = deque()
        self._pairs = 0  # sum of workers' count
        self._visible = 0  # sum of workers' visible
        self._limited = False
        self.events_applied = 0
        self.blocks_stored = 0
        self.blocks_removed = 0
        self.dropped_unknown_parent = 0
        self.dropped_invalid = 0
        self.ignored = 0  # blocks not indexed by rule: remote, off-device, other group/spec
        self.unknown_removals = 0
        self.evicted = 0

    # -- prompts -----------------------------------------------------------------------------
    def prompt_blocks(
        self, input_ids: Sequence[int] | np.ndarray, namespace: str | None = None
    ) -> PromptBlocks:
        """The keys of every full block of a prompt (``namespace``: see kv_hash.kv_namespace)."""
        n = len(input_ids)
        keys = prompt_keys(
            input_ids, self.block_size, n // self.block_size, namespace_seed(namespace)
        )
        return PromptBlocks(keys, n)

    def _match_keys(self, prompt: Prompt, namespace: str | None) -> list[int]:
        # Engines recompute a prompt's last token (they need its logits): at most len-1 cached.
        if isinstance(prompt, PromptBlocks):
            limit = max(prompt.n_tokens - 1, 0) // self.block_size
            return prompt.keys if len(prompt.keys) <= limit else prompt.keys[:limit]
        limit = max(len(prompt) - 1, 0) // self.block_size
        return prompt_keys(prompt, self.block_size, limit, namespace_seed(namespace))

    # -- the routing side ----------------------------------------------------------------------
    def match(
        self, prompt: Prompt, worker_ids: Iterable[str], namespace: str | None = None
    ) -> dict[str, int]:
        """Per worker, the prompt's longest prefix it holds in cache, in tokens (a multiple of
        the block size, below the prompt's length). Precise blocks for every worker; approximate
        entries too for workers whose event stream is not live and complete."""
        result = dict.fromkeys(worker_ids, 0)
        keys = self._match_keys(prompt, namespace)
        if not keys:
            return result
        alive = 0
        owners: list[tuple[int, _Worker, bool]] = []
        use_approx = False
        bisect = True
        now = None
        for worker_id in result:
            st = self._workers.get(worker_id)
            if st is None:
                continue
            if st.visible:
                bit = 1 << st.slot
                alive |= bit
                owners.append((bit, st, True))
                bisect = bisect and not st.orphans
            if st.young is not None:
                now = self._clock() if now is None else now
                self._expire(st, now)
                for generation in st.generations():
                    bit = 1 << generation.slot
                    alive |= bit
                    owners.append((bit, st, False))
                    use_approx = True
        if not alive:
            if self._recent:
                self._match_recent(keys, result)
            return result
        if bisect:
            ended = self._bisect(keys, alive, use_approx)
        else:
            ended = self._walk(keys, alive, use_approx)
        if len(ended) == len(owners) and not any(ended.values()):
            if self._recent:
                self._match_recent(keys, result)
            return result  # no worker holds even the first block
        depth = len(keys)
        bs = self.block_size
        for bit, st, precise in owners:
            blocks = ended.get(bit, depth)
            if precise and blocks > st.depth_limit:
                blocks = st.depth_limit
            tokens = blocks * bs
            if tokens > result[st.worker_id]:
                result[st.worker_id] = tokens
        if self._recent:
            self._match_recent(keys, result)
        return result

    def _match_recent(self, keys: list[int], result: dict[str, int]) -> None:
        """Raise each worker's match to the deepest of the prompt's keys recently routed there
        (a key is a hash of the whole prefix up to it, so that whole prefix was routed)."""
        self._expire_recent(self._clock())
        common = self._recent.keys() & keys  # one pass in C; rarely more than a key or two
        if not common:
            return
        bs = self.block_size
        for key in common:
            tokens = (keys.index(key) + 1) * bs
            for worker_id in self._recent[key]:
                if worker_id in result and tokens > result[worker_id]:
                    result[worker_id] = tokens

    def _expire_recent(self, now: float) -> None:
        order, recent = self._recent_order, self._recent
        while order and order[0][0] <= now:
            expires, key, worker_id = order.popleft()
            holders = recent.get(key)
            if holders is not None and holders.get(worker_id) == expires:
                del holders[worker_id]
                if not holders:
                    del recent[key]

    def _walk(self, keys: list[int], alive: int, use_approx: bool) -> dict[int, int]:
        """Per slot bit, the leading keys it holds: a linear walk, exact in every case."""
        ended: dict[int, int] = {}
        held = self._held.get
        approx = self._approx.get
        for depth, key in enumerate(keys):
            m = (held(key, 0) | approx(key, 0)) & alive if use_approx else held(key, 0) & alive
            if m != alive:
                gone = alive & ~m
                while gone:
                    low = gone & -gone
                    ended[low] = depth
                    gone ^= low
                alive = m
                if not alive:
                    break
        return ended

    def _bisect(self, keys: list[int], alive: int, use_approx: bool) -> dict[int, int]:
        """The same by bisection, for slots whose holdings are closed under prefixes (no orphan
        blocks; approximate entries always are): the set of slots holding key d only shrinks
        as d grows, so each slot's end is found in log2(len(keys)) lookups."""
        held = self._held.get
        approx = self._approx.get

        def at(d: int) -> int:
            key = keys[d]
            return (held(key, 0) | approx(key, 0)) & alive if use_approx else held(key, 0) & alive

        ended: dict[int, int] = {}
        first = at(0)
        gone = alive & ~first
        while gone:
            low = gone & -gone
            ended[low] = 0
            gone ^= low
        last = len(keys) - 1
        if not first or not last:
            return ended
        # (lo, hi, holders at lo, holders at hi): every slot held at lo but not at hi ends
        # somewhere in (lo, hi].
        stack = [(0, last, first, at(last))]
        while stack:
            lo, hi, a, b = stack.pop()
            if a == b:
                continue
            if hi - lo == 1:
                gone = a & ~b
                while gone:
                    low = gone & -gone
                    ended[low] = hi
                    gone ^= low
                continue
            mid = (lo + hi) >> 1
            m = at(mid)
            stack.append((mid, hi, m, b))
            stack.append((lo, mid, a, m))
        return ended

    def record_routed(self, worker_id: str, prompt: Prompt, namespace: str | None = None) -> None:
        """A prompt was sent to ``worker_id``: unless the worker's events are live and complete,
        remember its blocks there as approximate entries (the engine will have cached them)."""
        st = self._worker(worker_id)
        if st.precise:
            if self.speculative_ttl > 0:
                self._record_recent(worker_id, prompt, namespace)
            return
        if isinstance(prompt, PromptBlocks):
            keys = prompt.keys
        else:
            keys = prompt_keys(
                prompt, self.block_size, len(prompt) // self.block_size, namespace_seed(namespace)
            )
        if not keys:
            return
        now = self._clock()
        self._expire(st, now)
        young = st.young
        new = set(keys)
        if young is not None:
            new -= young.keys
        half = self.max_approx_blocks // 2
        if young is None or (new and young.keys and len(young.keys) + len(new) > half):
            # The young generation is full: it becomes the old one, the old one goes.
            if st.old is not None:
                self._retire_generation(st.old)
            st.old = young
            young = st.young = _Generation(self._slot(), now)
            new = set(keys)
        young.keys |= new
        young.at = now
        bit = 1 << young.slot
        table = self._approx
        get = table.get
        for key in new:
            table[key] = get(key, 0) | bit
        self.maintain(_MAINTAIN_STEPS)

    def _record_recent(self, worker_id: str, prompt: Prompt, namespace: str | None) -> None:
        if isinstance(prompt, PromptBlocks):
            keys = prompt.keys[-2:]
        else:
            n = len(prompt) // self.block_size
            keys = prompt_keys(prompt, self.block_size, n, namespace_seed(namespace))[-2:]
        now = self._clock()
        self._expire_recent(now)
        expires = now + self.speculative_ttl
        # The last two: the same prompt sent again is matched one block short of its end
        # when its length is a multiple of the block size (its last token is recomputed).
        for key in keys:
            self._recent.setdefault(key, {})[worker_id] = expires
            self._recent_order.append((expires, key, worker_id))

    def _expire(self, st: _Worker, now: float) -> None:
        """Drop the generations nothing was recorded in for the TTL."""
        ttl = self.approx_ttl
        old = st.old
        if old is not None and now - old.at > ttl:
            self._retire_generation(old)
            st.old = None
        young = st.young
        if young is not None and now - young.at > ttl:
            self._retire_generation(young)
            st.young = None

    def _retire_generation(self, generation: _Generation) -> None:
        if generation.keys:
            self._jobs.append(_Retire(self._approx, generation.slot, iter(generation.keys)))
        else:
            heapq.heappush(self._free_slots, generation.slot)

    # -- worker state --------------------------------------------------------------------------
    def set_precise(self, worker_id: str, precise: bool) -> None:
        """Whether ``worker_id``'s blocks are known exactly (its event stream is live and its
        state complete). Becoming precise drops its approximate entries."""
        st = self._worker(worker_id)
        if precise and not st.precise:
            self._retire_approx(st)
        st.precise = precise

    def is_precise(self, worker_id: str) -> bool:
        st = self._workers.get(worker_id)
        return st is not None and st.precise

    def reset_worker(self, worker_id: str) -> None:
        """Forget everything ``worker_id`` holds, precise and approximate (its engine cleared its
        cache, or its state is being resynced). O(1): the old entries are cleared by maintain()."""
        st = self._worker(worker_id)
        self._retire_held(st)
        self._retire_approx(st)

    def remove_worker(self, worker_id: str) -> None:
        """``worker_id`` left the fleet."""
        st = self._workers.pop(worker_id, None)
        if st is None:
            return
        self._retire_held(st, reuse=False)
        self._retire_approx(st)
        self.maintain(_MAINTAIN_STEPS)

    def workers(self) -> list[str]:
        return list(self._workers)

    def _worker(self, worker_id: str) -> _Worker:
        st = self._workers.get(worker_id)
        if st is None:
            st = self._workers[worker_id] = _Worker(worker_id, self._slot())
        return st

    def _slot(self) -> int:
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        self._next_slot += 1
        return self._next_slot - 1

    def _retire_held(self, st: _Worker, reuse: bool = True) -> None:
        self._pairs -= st.count
        self._visible -= st.visible
        if st.count:
            keys = (value & MASK64 for value in st.by_engine.values())
            self._jobs.append(_Retire(self._held, st.slot, keys))
        else:
            heapq.heappush(self._free_slots, st.slot)
        st._fresh()
        st.generation += 1
        if reuse:
            st.slot = self._slot()

    def _retire_approx(self, st: _Worker) -> None:
        for generation in st.generations():
            self._retire_generation(generation)
        st.young = st.old = None

    # -- events --------------------------------------------------------------------------------
    def apply_batch(self, worker_id: str, batch: common_pb2.KvEventBatch) -> int:
        """Apply every event of ``batch`` to ``worker_id``; returns the blocks it touched."""
        return sum(self.apply_event(worker_id, event) for event in batch.events)

    def apply_event(self, worker_id: str, event: common_pb2.KvCacheEvent) -> int:
        """Apply one KV event of ``worker_id``'s engine; returns the blocks it touched."""
        kind = event.WhichOneof("data")
        st = self._worker(worker_id)
        self.events_applied += 1
        if kind == "stored":
            touched = self._apply_stored(st, event.stored)
        elif kind == "removed":
            touched = self._apply_removed(st, event.removed)
        elif kind == "cleared":
            touched = 1
            # A residency agent's (offloading tier's) clear says nothing about the device cache.
            if not (event.cleared.HasField("ownership") and event.cleared.ownership):
                self.reset_worker(worker_id)
        else:
            return 0
        self.maintain(_MAINTAIN_STEPS + 2 * touched)
        return touched

    def _indexed(self, msg: Any, level: int | None) -> bool:
        """Whether blocks of a stored/removed event belong in the index: local, device tier,
        our KV cache group, engine-owned (not an offloading tier's)."""
        if msg.HasField("locality") and msg.locality == common_pb2.KV_CACHE_LOCALITY_REMOTE:
            return False
        if msg.HasField("ownership") and msg.ownership:
            return False
        if msg.HasField("group_idx") and msg.group_idx != self.kv_group:
            return False
        if msg.HasField("tier"):
            return msg.tier in _DEVICE_TIERS
        if msg.HasField("medium") and msg.medium:
            return msg.medium.upper() not in _OFF_DEVICE
        return not level  # cache_level: 0 device, 1 host, 2 disk, 3 external

    def _apply_stored(self, st: _Worker, stored: common_pb2.KvBlocksStored) -> int:
        blocks = stored.blocks
        n = len(blocks)
        if not n:
            return 0
        first = blocks[0]
        level = first.cache_level if first.HasField("cache_level") else None
        kind = stored.kv_cache_spec_kind.lower() if stored.HasField("kv_cache_spec_kind") else ""
        if (
            not self._indexed(stored, level)
            or kind not in _FULL_ATTENTION
            or stored.kv_cache_spec_sliding_window
        ):
            self.ignored += n
            return n
        if stored.HasField("parent_block_hash"):
            parent = st.by_engine.get(stored.parent_block_hash)
            if parent is None:
                # Its key depends on a prefix we never saw: it cannot be matched by content.
                self.dropped_unknown_parent += n
                return n
            parent_key, depth = parent & MASK64, _depth(parent) + 1
            parent_hash: int | None = stored.parent_block_hash
        else:
            parent_key, depth = namespace_seed(_stored_namespace(stored)), 0
            parent_hash = None
        bs = self.block_size
        tokens = []
        valid = 0
        extras: list[int] | None = None
        for block in blocks:
            ids = block.token_ids
            if len(ids) != bs:
                break  # a partial or foreign-sized block ends the chain we can key
            tokens.append(ids)
            if block.extra_keys:
                parts = _extra_parts(block, stored)
                if parts:
                    extras = extras if extras is not None else [0] * n
                    extras[valid] = extra_term(parts)
            valid += 1
        self.dropped_invalid += n - valid
        if not valid:
            return n
        keys = chain_keys(parent_key, depth, tokens, bs)
        if extras is not None:
            # An extra key is an input of its block's hash and so of every descendant's.
            total = 0
            for i in range(valid):
                total += extras[i]
                keys[i] = (keys[i] + total) & MASK64
        done = 0
        for i in range(valid):
            engine_hash = blocks[i].block_hash
            if not self._store(st, engine_hash, keys[i], depth + i, parent_hash):
                # Below the worker's depth limit (the memory cap): so are its descendants.
                self.evicted += valid - i
                break
            parent_hash = engine_hash
            done += 1
        if done:
            self.blocks_stored += done
            self._enforce_cap()
        return n

    def _apply_removed(self, st: _Worker, removed: common_pb2.KvBlocksRemoved) -> int:
        hashes = removed.block_hashes
        level = removed.cache_level if removed.HasField("cache_level") else None
        if not self._indexed(removed, level):
            self.ignored += len(hashes)
            return len(hashes)
        for engine_hash in hashes:
            if self._remove(st, engine_hash):
                self.blocks_removed += 1
            else:
                self.unknown_removals += 1
        if self._limited:
            self._enforce_cap()
        return len(hashes)

    def _store(
        self, st: _Worker, engine_hash: int, key: int, depth: int, parent: int | None
    ) -> bool:
        if depth >= st.depth_limit:
            return False
        by_engine = st.by_engine
        if engine_hash in by_engine:
            st.copies[engine_hash] = st.copies.get(engine_hash, 0) + 1
            return True
        record = key | depth << 64
        if parent is not None:
            record |= (parent & MASK64) << _PARENT_SHIFT
            by_engine[parent] += _CHILD  # held: the caller found it, or just stored it
        if st.orphan_children:
            # Back in cache under children that outlived it: they are no longer orphans.
            children = st.orphan_children.pop(engine_hash, 0)
            if children:
                st.orphans -= children
                record += children * _CHILD
        by_engine[engine_hash] = record
        depths = st.depths
        if depth >= len(depths):
            depths.extend([0] * (depth + 1 - len(depths)))
        depths[depth] += 1
        st.count += 1
        st.visible += 1
        self._pairs += 1
        self._visible += 1
        bit = 1 << st.slot
        mask = self._held.get(key, 0)
        if mask & bit:
            st.key_refs[key] = st.key_refs.get(key, 0) + 1
        else:
            self._held[key] = mask | bit
        return True

    def _remove(self, st: _Worker, engine_hash: int) -> bool:
        """One physical copy of a block left the worker's cache."""
        extra = st.copies.get(engine_hash)
        if extra:
            if extra == 1:
                del st.copies[engine_hash]
            else:
                st.copies[engine_hash] = extra - 1
            return True
        value = st.by_engine.get(engine_hash)
        if value is None:
            return False
        self._drop(st, engine_hash, value)
        return True

    def _drop(self, st: _Worker, engine_hash: int, value: int) -> None:
        """Forget a block of the worker (every copy of it)."""
        by_engine = st.by_engine
        del by_engine[engine_hash]
        st.copies.pop(engine_hash, None)
        key, depth = value & MASK64, _depth(value)
        children = value >> 160
        if children:
            st.orphan_children[engine_hash] = children
            st.orphans += children
        if depth:
            parent = _parent(value)
            record = by_engine.get(parent)
            if record is not None:
                by_engine[parent] = record - _CHILD
            else:  # it was an orphan itself
                left = st.orphan_children[parent] - 1
                if left:
                    st.orphan_children[parent] = left
                else:
                    del st.orphan_children[parent]
                st.orphans -= 1
        st.depths[depth] -= 1
        st.count -= 1
        self._pairs -= 1
        if depth < st.depth_limit:
            st.visible -= 1
            self._visible -= 1
        refs = st.key_refs.get(key)
        if refs:
            if refs == 1:
                del st.key_refs[key]
            else:
                st.key_refs[key] = refs - 1
            return
        self._clear_bit(self._held, key, 1 << st.slot)

    @staticmethod
    def _clear_bit(table: dict[int, int], key: int, bit: int) -> None:
        mask = table.get(key)
        if mask is not None and mask & bit:
            mask ^= bit
            if mask:
                table[key] = mask
            else:
                del table[key]

    # -- the memory cap ------------------------------------------------------------------------
    def _enforce_cap(self) -> None:
        if self._visible > self.max_blocks:
            # Evict a little more than the excess, so that eviction runs once per many stores.
            target = self.max_blocks - max(1, self.max_blocks // 16)
            while self._visible > target:
                victim = max(self._workers.values(), key=lambda w: w.visible)
                if not victim.visible:
                    break
                self._lower_limit(victim, self._visible - target)
        elif self._limited and self._visible < self.max_blocks * 3 // 4:
            self._lift_limits()

    def _lower_limit(self, st: _Worker, excess: int) -> None:
        depths = st.depths
        limit = min(st.depth_limit, len(depths))
        dropped = 0
        while limit > 0 and dropped < excess:
            limit -= 1
            dropped += depths[limit]
        st.depth_limit = limit
        st.visible -= dropped
        self._visible -= dropped
        self._limited = True
        self._jobs.append(_Evict(st, st.generation, iter(list(st.by_engine))))

    def _lift_limits(self) -> None:
        self._limited = False
        for st in self._workers.values():
            if st.depth_limit != _NO_LIMIT:
                st.depth_limit = _NO_LIMIT
                self._visible += st.count - st.visible
                st.visible = st.count

    # -- deferred cleanup ----------------------------------------------------------------------
    def maintain(self, budget: int = 4096) -> bool:
        """Do up to ``budget`` steps of deferred cleanup (retired slots, evictions); True when
        work remains. Mutating calls do a little each; an owner with spare time may do more."""
        jobs = self._jobs
        while budget > 0 and jobs:
            job = jobs[0]
            if isinstance(job, _Retire):
                done = 0
                table, bit = job.table, 1 << job.slot
                for key in itertools.islice(job.keys, budget):
                    self._clear_bit(table, key, bit)
                    done += 1
                if done < budget:
                    jobs.popleft()
                    heapq.heappush(self._free_slots, job.slot)
            else:
                st = job.worker
                done = 0
                if st.generation != job.generation or self._workers.get(st.worker_id) is not st:
                    jobs.popleft()  # reset or removed since: its retired slot covers it all
                else:
                    by_engine = st.by_engine
                    for engine_hash in itertools.islice(job.hashes, budget):
                        done += 1
                        value = by_engine.get(engine_hash)
                        if value is not None and _depth(value) >= st.depth_limit:
                            self._drop(st, engine_hash, value)
                            self.evicted += 1
                    if done < budget:
                        jobs.popleft()
            budget -= max(done, 1)
        return bool(jobs)

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict[str, int | float]:
        approx_entries = sum(st.approx_entries for st in self._workers.values())
        return {
            "block_size": self.block_size,
            "workers": len(self._workers),
            "precise_workers": sum(st.precise for st in self._workers.values()),
            "blocks": self._visible,
            "blocks_held": self._pairs,
            "distinct_blocks": len(self._held),
            "max_blocks": self.max_blocks,
            "approx_entries": approx_entries,
            "speculative_entries": len(self._recent_order),
            "events_applied": self.events_applied,
            "blocks_stored": self.blocks_stored,
            "blocks_removed": self.blocks_removed,
            "dropped_unknown_parent": self.dropped_unknown_parent,
            "dropped_invalid": self.dropped_invalid,
            "ignored": self.ignored,
            "unknown_removals": self.unknown_removals,
            "evicted": self.evicted,
            "cleanup_pending": len(self._jobs),
            "estimated_bytes": self.estimated_bytes(),
        }

    def worker_stats(self, worker_id: str) -> dict[str, int | bool] | None:
        st = self._workers.get(worker_id)
        if st is None:
            return None
        return {
            "precise": st.precise,
            "blocks": st.visible,
            "blocks_held": st.count,
            "approx_entries": st.approx_entries,
            "depth_limit": -1 if st.depth_limit == _NO_LIMIT else st.depth_limit,
            "orphans": st.orphans,
        }

    def estimated_bytes(self) -> int:
        """Heap bytes of the index: the dicts' tables (exact) and the int objects they hold
        (36 bytes for a 64-bit key or engine hash, 28 for a mask above the cached small ints)."""
        size = sys.getsizeof(self._held) + sys.getsizeof(self._approx)
        size += (len(self._held) + len(self._approx)) * (_INT64 + _MASK_INT)
        for st in self._workers.values():
            size += sys.getsizeof(st.by_engine) + st.count * 2 * _INT64
            size += sys.getsizeof(st.copies) + sys.getsizeof(st.key_refs)
            size += len(st.depths) * 8
            for generation in st.generations():
                size += sys.getsizeof(generation.keys) + len(generation.keys) * _INT64
        return size


_INT64 = sys.getsizeof(1 << 63)
_MASK_INT = sys.getsizeof(1 << 20)


def _depth(record: int) -> int:
    return (record >> 64) & _DEPTH_MASK


def _parent(record: int) -> int:
    parent = (record >> _PARENT_SHIFT) & MASK64
    return parent - (1 << 64) if parent >> 63 else parent  # engine hashes are signed int64


def _stored_namespace(stored: common_pb2.KvBlocksStored) -> str | None:
    lora = stored.lora_name if stored.HasField("lora_name") else None
    if not lora and stored.blocks and stored.blocks[0].HasField("lora_id"):
        lora = f"#{stored.blocks[0].lora_id}"  # deprecated numeric id, no name published
    salt = stored.cache_salt if stored.HasField("cache_salt") else None
    return kv_namespace(lora, salt)


def _extra_parts(block: common_pb2.KvBlock, stored: common_pb2.KvBlocksStored) -> list[bytes]:
    """A block's extra hash inputs, less the LoRA name and cache salt (already the chain's
    namespace: vLLM repeats them among the extra keys)."""
    folded = {stored.lora_name, stored.cache_salt} - {""}
    return [
        key.SerializeToString(deterministic=True)
        for key in block.extra_keys
        if not (key.WhichOneof("key") == "text" and key.text in folded)
    ]
