"""What a routing policy sees and answers: the request's token ids (and routing key), the workers
that may take it; one of them, or none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from herdsman.routing.registry import Worker


@dataclass(slots=True)
class RoutingRequest:
    input_ids: Sequence[int]
    # A client-chosen key for sticky routing (X-Routing-Key, or SMG's X-SMG-Routing-Key).
    routing_key: str | None = None
    # Set by the policy: prompt tokens the chosen worker has to compute (not cached there),
    # counted in its prefill backlog until the request's first token (Worker.prefilling).
    prefill_tokens: int = 0


@dataclass(slots=True, frozen=True)
class PolicyOptions:
    # prefix_hash: how many leading tokens decide the worker.
    prefix_tokens: int = 256
    # cache_aware: a worker may take a request for its cache only while its load is within
    # balance_abs requests, or a factor balance_rel, of the least loaded worker's.
    balance_abs: float = 4.0
    balance_rel: float = 1.25
    # cache_aware: weight of queued prefill tokens against cached prompt tokens.
    prefill_weight: float = 0.0
    # Virtual nodes per worker on the consistent-hash ring.
    ring_replicas: int = 160
    extra: dict[str, object] = field(default_factory=dict)


class RoutingPolicy(Protocol):
    name: str

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        """One of ``workers`` (all available, all serving the request's model), or None."""
        ...
