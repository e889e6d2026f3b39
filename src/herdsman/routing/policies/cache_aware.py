"""cache_aware: send a request where its prompt's prefix is already cached, within a bound on
load imbalance.

The prefix index (``routing.kv_index``) is built from the engines' own KV events (which blocks
each worker holds), or, for workers whose event stream is down or absent, from the requests this
policy routed to them. For each request:

1. the workers whose load (running and waiting requests) is within ``balance_abs`` requests, or
   a factor ``balance_rel``, of the least loaded worker's are eligible: cache affinity can never
   pile requests onto one worker while others idle, nor starve one (a worker with nothing cached
   is still the least loaded some of the time, and is chosen then);
2. among them, the one holding the longest cached prefix of the prompt wins; with
   ``prefill_weight`` > 0, the prefill queued there counts against it: the score is the prompt
   tokens left to compute plus that weight times the worker's prefill backlog (the engine's
   ``waiting_uncached_tokens``, or this process's requests still prefilling there when they are
   more). Off by default: on the routing benchmark (docs/benchmarks-routing.md) moving turns
   away from a busy cache cost more hit rate than the queue it avoided;
3. ties go to the longer cached prefix, then to the least loaded, then to a hash of the prompt's
   start with each worker's id (rendezvous hashing), so every gateway process makes the same
   choice for the same prefix.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, Protocol

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.policies.hashing import hash64
from herdsman.routing.registry import Worker


class PrefixIndex(Protocol):
    def prompt_blocks(self, input_ids: Sequence[int]) -> Any:
        """The prompt in the index's terms (its block keys), computed once per request."""
        ...

    def match(self, prompt: Any, worker_ids: Sequence[str]) -> dict[str, int]:
        """Leading prompt tokens each worker holds in its prefix cache."""
        ...

    def record_routed(self, worker_id: str, prompt: Any) -> None:
        """A prompt was sent to this worker (used where the worker publishes no events)."""
        ...


class CacheAwarePolicy:
    name = "cache_aware"

    def __init__(
        self,
        index: PrefixIndex,
        balance_abs: float = 4.0,
        balance_rel: float = 1.25,
        prefill_weight: float = 0.0,
    ) -> None:
        self.index = index
        self._abs = balance_abs
        self._rel = balance_rel
        self._prefill_weight = prefill_weight

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        ids = request.input_ids
        prompt = self.index.prompt_blocks(ids)
        if len(workers) == 1:
            chosen, cached = workers[0], 0
        else:
            chosen, cached = self._choose(workers, ids, prompt)
        request.prefill_tokens = max(len(ids) - cached, 0)
        self.index.record_routed(chosen.id, prompt)
        return chosen

    def _choose(
        self, workers: Sequence[Worker], ids: Sequence[int], prompt: Any
    ) -> tuple[Worker, int]:
        loads = [w.load_score() for w in workers]
        least = min(loads)
        bound = max(least + self._abs, least * self._rel)
        matched = self.index.match(prompt, [w.id for w in workers])
        # The tie-break that does not depend on this process: rendezvous hashing of the prompt's
        # start with each worker's id (uniform over workers, the same in every process).
        anchor = array("I", ids[:16]).tobytes()
        n = len(ids)
        weight = self._prefill_weight
        best: Worker | None = None
        best_key: tuple[float, int, float, int] | None = None
        for worker, load in zip(workers, loads, strict=True):
            if load > bound:
                continue
            cached = matched.get(worker.id, 0)
            cost = n - cached + (weight * worker.prefill_backlog() if weight else 0)
            key = (-cost, cached, -load, hash64(worker.id.encode() + anchor))
            if best_key is None or key > best_key:
                best, best_key = worker, key
        assert best is not None and best_key is not None  # the least loaded is within the bound
        return best, best_key[1]
