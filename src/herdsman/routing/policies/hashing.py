"""Hashing policies: the same key always goes to the same worker, in every gateway process, and
when a worker comes or goes only its share of the keys moves (a consistent-hash ring).

- consistent_hash: the key is the request's routing key (X-Routing-Key or SMG's
  X-SMG-Routing-Key); requests without one go round robin.
- prefix_hash: the key is the first N prompt tokens (``PolicyOptions.prefix_tokens``): a shared
  system prompt or conversation start lands on one worker, whose prefix cache then holds it.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.policies.round_robin import RoundRobinPolicy
from herdsman.routing.registry import Worker

_RINGS_KEPT = 8  # rings for the last few sets of available workers


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Worker ids on a ring of 64-bit points, each worker at ``replicas`` points."""

    def __init__(self, worker_ids: Sequence[str], replicas: int) -> None:
        points = sorted(
            (hash64(f"{wid}#{i}".encode()), wid) for wid in worker_ids for i in range(replicas)
        )
        self._keys = [p for p, _ in points]
        self._ids = [wid for _, wid in points]

    def lookup(self, key: bytes) -> str:
        i = bisect.bisect(self._keys, hash64(key)) % len(self._keys)
        return self._ids[i]


class _RingPolicy:
    def __init__(self, replicas: int) -> None:
        self._replicas = replicas
        self._rings: OrderedDict[tuple[str, ...], HashRing] = OrderedDict()

    def _pick(self, workers: Sequence[Worker], key: bytes) -> Worker:
        ids = tuple(sorted(w.id for w in workers))
        ring = self._rings.get(ids)
        if ring is None:
            ring = self._rings[ids] = HashRing(ids, self._replicas)
            while len(self._rings) > _RINGS_KEPT:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(ids)
        chosen = ring.lookup(key)
        return next(w for w in workers if w.id == chosen)


class ConsistentHashPolicy(_RingPolicy):
    name = "consistent_hash"

    def __init__(self, replicas: int = 160) -> None:
        super().__init__(replicas)
        self._fallback = RoundRobinPolicy()

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        if request.routing_key is None:
            return self._fallback.select(workers, request)
        return self._pick(workers, request.routing_key.encode())


class PrefixHashPolicy(_RingPolicy):
    name = "prefix_hash"

    def __init__(self, prefix_tokens: int = 256, replicas: int = 160) -> None:
        super().__init__(replicas)
        self._prefix_tokens = prefix_tokens

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        prefix = array("I", request.input_ids[: self._prefix_tokens]).tobytes()
        return self._pick(workers, prefix)
