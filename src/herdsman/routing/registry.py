"""The engine workers this gateway knows, with what each serves and whether it is healthy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from herdsman.engines import EngineClient, ModelInfo
from herdsman.routing.circuit import CircuitBreaker, CircuitConfig

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Worker:
    url: str
    engine: EngineClient
    model: ModelInfo
    # Decided by health checks (in the supervisor, broadcast to every process).
    healthy: bool = True
    in_flight: int = 0
    # This process's own record of how the worker serves its requests.
    circuit: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(CircuitConfig()))
    # Told about every health change this process decides itself (health checks).
    on_change: Callable[[Worker, str], None] | None = field(default=None, repr=False)
    # Told when a request finds the worker unreachable: the supervisor checks it at once.
    on_suspect: Callable[[Worker, str], None] | None = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        """Healthy, and its circuit lets a request through."""
        return self.healthy and self.circuit.allows()

    def mark_failed(self, reason: str) -> None:
        if self.set_health(False, reason) and self.on_change is not None:
            self.on_change(self, reason)

    def mark_healthy(self) -> None:
        if self.set_health(True, "") and self.on_change is not None:
            self.on_change(self, "")

    def suspect(self, reason: str) -> None:
        """A request could not reach the worker; one failure is not enough to call it down."""
        if self.on_suspect is not None:
            self.on_suspect(self, reason)

    def set_health(self, healthy: bool, reason: str) -> bool:
        """Apply a health state; True when it changed."""
        if healthy == self.healthy:
            return False
        self.healthy = healthy
        if healthy:
            # Back after being down (restarted, most likely): its old failures say nothing now.
            self.circuit.reset()
            log.info("worker %s healthy again", self.url)
        else:
            log.warning("worker %s marked unhealthy: %s", self.url, reason)
        return True


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: list[Worker] = []

    def add(self, worker: Worker) -> None:
        self._workers.append(worker)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, url: str) -> Worker | None:
        return next((w for w in self._workers if w.url == url), None)

    def healthy(self) -> list[Worker]:
        return [w for w in self._workers if w.healthy]

    def available(self) -> list[Worker]:
        return [w for w in self._workers if w.available]

    async def close(self) -> None:
        for worker in self._workers:
            await worker.engine.close()
