"""round_robin: each worker in turn."""

from __future__ import annotations

from collections.abc import Sequence

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.registry import Worker


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        if not workers:
            return None
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker
