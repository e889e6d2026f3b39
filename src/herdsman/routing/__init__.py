"""Which engine worker serves a request: the registry of workers, their health, the policies."""

from herdsman.routing.health import HealthChecker
from herdsman.routing.policy import POLICIES, RoundRobinPolicy, RoutingPolicy
from herdsman.routing.registry import Worker, WorkerRegistry

__all__ = [
    "POLICIES",
    "HealthChecker",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "Worker",
    "WorkerRegistry",
]
