"""Routing policies choose one worker among the healthy ones.

A policy sees the request's token ids so that cache-aware and hashing policies can be added
without changing the call site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herdsman.routing.registry import Worker


class RoutingPolicy(Protocol):
    name: str

    def select(self, workers: Sequence[Worker], input_ids: Sequence[int]) -> Worker | None: ...


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def select(self, workers: Sequence[Worker], input_ids: Sequence[int]) -> Worker | None:
        if not workers:
            return None
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker


POLICIES: dict[str, type[RoutingPolicy]] = {RoundRobinPolicy.name: RoundRobinPolicy}
