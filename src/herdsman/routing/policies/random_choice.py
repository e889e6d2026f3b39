"""random: any worker, uniformly."""

from __future__ import annotations

import random
from collections.abc import Sequence

from herdsman.routing.policies.base import RoutingRequest
from herdsman.routing.registry import Worker


class RandomPolicy:
    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        return self._rng.choice(workers) if workers else None
