"""Which engine worker serves a request: the registry of workers, their health, the policies."""

from herdsman.routing.circuit import CircuitBreaker, CircuitConfig, CircuitState
from herdsman.routing.health import HealthChecker
from herdsman.routing.policy import POLICIES, RoundRobinPolicy, RoutingPolicy
from herdsman.routing.registry import Worker, WorkerRegistry

__all__ = [
    "POLICIES",
    "CircuitBreaker",
    "CircuitConfig",
    "CircuitState",
    "HealthChecker",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "Worker",
    "WorkerRegistry",
]
