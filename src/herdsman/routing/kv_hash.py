"""Content keys of KV blocks: what the prefix index (kv_index.py) is keyed by.

The gateway cannot recompute an engine's block hashes (vLLM's depend on a per-process seed and
on its hash function), so blocks are identified by their *content*: the key of block ``i`` of a
token sequence is a 64-bit hash of the whole prefix up to and including it,

    key_i = seed(namespace) + sum_{j < (i + 1) * block_size} (t_j + 1) * R_j   (mod 2**64)

where ``R_j`` is a fixed pseudo-random odd multiplier per token position. It is a prefix sum,
so a prompt's keys are one vectorized pass (ids x multipliers, cumulative sum, every
block_size-th value), and a block announced by an engine extends its parent's key with its own
tokens at its own depth. Nothing depends on Python's salted ``hash()``: every process computes
the same keys.

Collisions: two different prefixes of the same length collide when sum_j d_j * R_j = 0 mod 2**64
(d_j the differences of their ids + 1). With independent random odd R_j that happens with
probability about 2**-64 for prefixes unrelated to R, and never for prefixes differing in a
single position (an odd R_j times a nonzero |d_j| < 2**32 is nonzero mod 2**64). Different
lengths collide as unrelated values do. With a million indexed blocks a lookup is a false hit
with probability ~1e6 / 2**64 ~ 5e-14. A crafted collision is possible (the sum is linear), and
costs nothing but a routing hint: the engine does its own exact matching.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from array import array
from collections.abc import Sequence

import numpy as np

try:  # the prompt side in C (setup.py builds it); numpy computes the same keys without it
    from herdsman.routing import _kvhash
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _kvhash = None

MASK64 = (1 << 64) - 1
# Any constant works; fixed so that every process, on every host, draws the same multipliers.
_STREAM_SEED = 0x6A09E667F3BCC908

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, vectorized (uint64 arithmetic wraps mod 2**64)."""
    z = x + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


class _Multipliers:
    """R_j for every position j seen so far, grown (deterministically) on demand; also as Python
    ints with their prefix sums, for keying a few blocks without numpy's per-call overhead."""

    def __init__(self) -> None:
        self.table = np.empty(0, dtype=np.uint64)
        self.values: list[int] = []
        self.sums: list[int] = [0]  # sums[j] = sum(R[:j]) mod 2**64

    def get(self, n: int) -> np.ndarray:
        if n > len(self.table):
            size = max(n, 2 * len(self.table), 8192)
            positions = np.arange(size, dtype=np.uint64) + _U64(_STREAM_SEED)
            self.table = _splitmix64(positions) | _U64(1)
        return self.table

    def python(self, n: int) -> tuple[list[int], list[int]]:
        if n > len(self.values):
            self.values = self.get(n)[: max(n, 2 * len(self.values), 8192)].tolist()
            self.sums = [0, *(int(s) for s in np.cumsum(np.array(self.values, dtype=np.uint64)))]
        return self.values, self.sums


_multipliers = _Multipliers()


def namespace_seed(namespace: str | None) -> int:
    """The key offset of a cache namespace (LoRA adapter, cache salt); 0 for none."""
    if not namespace:
        return 0
    digest = hashlib.blake2b(namespace.encode(), digest_size=8, person=b"herdsman-kv-ns").digest()
    return int.from_bytes(digest, "little")


def kv_namespace(lora_name: str | None = None, cache_salt: str | None = None) -> str | None:
    """The namespace string of a request or a stored block: engines keep a LoRA adapter's and a
    salted request's blocks apart from plain ones, so the index does too."""
    if not lora_name and not cache_salt:
        return None
    return f"lora={lora_name or ''}\x00salt={cache_salt or ''}"


def extra_term(parts: Sequence[bytes]) -> int:
    """A block's contribution for hash inputs beyond its tokens (multimodal identifiers, other
    extra keys): added to its key and its descendants', never computed for a plain prompt."""
    h = hashlib.blake2b(digest_size=8, person=b"herdsman-kv-ex")
    for part in parts:
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def as_u64(ids: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` token ids as a writable uint64 array (a copy)."""
    if isinstance(ids, np.ndarray):
        return ids[:n].astype(np.uint64)
    try:
        # array('Q') converts a list about 3x faster than np.array / np.fromiter.
        return np.frombuffer(array("Q", ids[:n] if len(ids) > n else ids), dtype=np.uint64)
    except (OverflowError, TypeError):  # negative ids, or a sequence array() cannot take
        return np.asarray(ids[:n], dtype=np.int64).astype(np.uint64)


def prompt_keys(
    ids: Sequence[int] | np.ndarray, block_size: int, n_blocks: int, seed: int = 0
) -> list[int]:
    """Keys of the first ``n_blocks`` full blocks of a token sequence."""
    if n_blocks <= 0:
        return []
    n = n_blocks * block_size
    if _kvhash is not None and type(ids) in (list, tuple):
        try:
            return _kvhash.prompt_keys(ids, block_size, n_blocks, seed, _multipliers.get(n))
        except (OverflowError, TypeError):  # negative or non-int ids: numpy's way below
            pass
    values = as_u64(ids, n)
    values += _U64(1)
    values *= _multipliers.get(n)[:n]
    np.cumsum(values, out=values)
    keys = values[block_size - 1 :: block_size]
    if seed:
        keys += _U64(seed)
    return keys.tolist()


def chain_keys(
    parent_key: int, depth: int, blocks: Sequence[Sequence[int]], block_size: int
) -> list[int]:
    """Keys of consecutive blocks (each ``block_size`` token ids) whose first block sits at
    ``depth`` (0-based) under a parent block of key ``parent_key`` (the namespace seed for a
    first block)."""
    start = depth * block_size
    end = start + len(blocks) * block_size
    if len(blocks) > 4:
        values = np.frombuffer(array("Q", itertools.chain.from_iterable(blocks)), dtype=np.uint64)
        values += _U64(1)
        values *= _multipliers.get(end)[start:end]
        np.cumsum(values, out=values)
        keys = values[block_size - 1 :: block_size]
        if parent_key:
            keys += _U64(parent_key)
        return keys.tolist()
    # A few blocks (most events): Python ints beat numpy's fixed cost per call.
    r, sums = _multipliers.python(end)
    out = []
    key = parent_key
    for block in blocks:
        stop = start + block_size
        # sum((t + 1) * R_j) = sum(t * R_j) + sum(R_j)
        block_sum = sum(map(operator.mul, block, r[start:stop]))
        key = (key + block_sum + sums[stop] - sums[start]) & MASK64
        out.append(key)
        start = stop
    return out
