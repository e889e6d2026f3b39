"""The engine workers this gateway knows, with what each serves and whether it is healthy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from herdsman.engines import EngineClient, ModelInfo

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Worker:
    url: str
    engine: EngineClient
    model: ModelInfo
    healthy: bool = True
    in_flight: int = 0
    consecutive_failures: int = field(default=0, repr=False)
    # Told about every change this process observes itself, e.g. to tell the supervisor.
    on_change: Callable[[Worker, str], None] | None = field(default=None, repr=False)

    def mark_failed(self, reason: str) -> None:
        self.consecutive_failures += 1
        if self.set_health(False, reason) and self.on_change is not None:
            self.on_change(self, reason)

    def mark_healthy(self) -> None:
        self.consecutive_failures = 0
        if self.set_health(True, "") and self.on_change is not None:
            self.on_change(self, "")

    def set_health(self, healthy: bool, reason: str) -> bool:
        """Apply a health state; True when it changed."""
        if healthy == self.healthy:
            return False
        self.healthy = healthy
        if healthy:
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

    async def close(self) -> None:
        for worker in self._workers:
            await worker.engine.close()
