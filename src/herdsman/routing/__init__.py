"""Which engine worker serves a request: the registry of workers, their health and circuits,
their load, the routing policies, and the prefix index cache-aware routing reads."""

from herdsman.routing.circuit import CircuitBreaker, CircuitConfig, CircuitState
from herdsman.routing.health import HealthChecker
from herdsman.routing.load import WorkerLoad
from herdsman.routing.policies import (
    POLICY_NAMES,
    PolicyOptions,
    RoundRobinPolicy,
    RoutingPolicy,
    RoutingRequest,
    make_policy,
)
from herdsman.routing.registry import Worker, WorkerRegistry, worker_id

__all__ = [
    "POLICY_NAMES",
    "CircuitBreaker",
    "CircuitConfig",
    "CircuitState",
    "HealthChecker",
    "PolicyOptions",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "RoutingRequest",
    "Worker",
    "WorkerLoad",
    "WorkerRegistry",
    "make_policy",
    "worker_id",
]
