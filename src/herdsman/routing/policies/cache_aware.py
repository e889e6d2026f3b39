"""cache_aware: send a request where its prompt's prefix is already cached, within a bound on
load imbalance.

The prefix index (``routing.kv_index``) is built from the engines' own KV events (which blocks
each worker holds), or, for workers whose event stream is down or absent, from the requests this
policy routed to them. For each request:

1. the workers whose load is within ``balance_abs`` requests, or a factor ``balance_rel``, of the
   least loaded worker's are eligible: cache affinity can never pile requests onto one worker
   while others idle, nor starve one (a worker with nothing cached is still the least loaded
   some of the time, and is chosen then);
2. among them, the one holding the longest prefix of the prompt wins; ties go to the least
   loaded, then to a hash of the prompt's start with each worker's id (rendezvous hashing), so
   every gateway process makes the same choice for the same prefix;
3. a prompt cached nowhere goes to the least loaded worker (the same tie-breaks).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Protocol

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.policies.hashing import hash64
from herdsman.routing.registry import Worker


class PrefixIndex(Protocol):
    def match(self, input_ids: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        """Leading prompt tokens each worker holds in its prefix cache."""
        ...

    def record_routed(self, worker_id: str, input_ids: Sequence[int]) -> None:
        """A prompt was sent to this worker (used where the worker publishes no events)."""
        ...


class CacheAwarePolicy:
    name = "cache_aware"

    def __init__(
        self, index: PrefixIndex, balance_abs: float = 4.0, balance_rel: float = 1.25
    ) -> None:
        self.index = index
        self._abs = balance_abs
        self._rel = balance_rel

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        ids = request.input_ids
        chosen = workers[0] if len(workers) == 1 else self._choose(workers, ids)
        self.index.record_routed(chosen.id, ids)
        return chosen

    def _choose(self, workers: Sequence[Worker], ids: Sequence[int]) -> Worker:
        loads = [w.load_score() for w in workers]
        least = min(loads)
        bound = max(least + self._abs, least * self._rel)
        matched = self.index.match(ids, [w.id for w in workers])
        # The tie-break that does not depend on this process: rendezvous hashing of the prompt's
        # start with each worker's id (uniform over workers, the same in every process).
        anchor = array("I", ids[:16]).tobytes()
        best: Worker | None = None
        best_key: tuple[int, float, int] | None = None
        for worker, load in zip(workers, loads, strict=True):
            if load > bound:
                continue
            rendezvous = hash64(worker.id.encode() + anchor)
            key = (matched.get(worker.id, 0), -load, rendezvous)
            if best_key is None or key > best_key:
                best, best_key = worker, key
        assert best is not None  # the least loaded worker is always within the bound
        return best
