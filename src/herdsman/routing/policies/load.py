"""Load-based policies: least_load (the least loaded worker) and power_of_two (the less loaded of
two drawn at random: nearly as balanced, and no herd onto one worker between load records).

Load is ``Worker.load_score()``: the engine's running and waiting requests from its last load
record (KV-event stream or GetLoads polling) plus what this process has sent since.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.registry import Worker


def least_loaded(workers: Sequence[Worker], start: int = 0) -> Worker:
    """The least loaded worker; ties go to the first from ``start`` on (callers rotate it, so
    idle workers share requests instead of the first one taking them all)."""
    n = len(workers)
    best = workers[start % n]
    best_load = best.load_score()
    for i in range(1, n):
        worker = workers[(start + i) % n]
        load = worker.load_score()
        if load < best_load:
            best, best_load = worker, load
    return best


class LeastLoadPolicy:
    name = "least_load"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        self._turn += 1
        return least_loaded(workers, self._turn)


class PowerOfTwoPolicy:
    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if len(workers) < 2:
            return workers[0] if workers else None
        a, b = self._rng.sample(range(len(workers)), 2)
        first, second = workers[a], workers[b]
        return second if second.load_score() < first.load_score() else first
