"""Periodic health checks: a failing worker leaves the rotation, a recovered one rejoins."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from herdsman.routing.registry import Worker, WorkerRegistry

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, registry: WorkerRegistry, interval: float, timeout: float) -> None:
        self._registry = registry
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-checker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(w) for w in self._registry))

    async def check(self, worker: Worker) -> None:
        if await worker.engine.health_check(self._timeout):
            worker.mark_healthy()
        else:
            worker.mark_failed("health check failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:  # a checker that dies silently would freeze every worker's state
                log.exception("health check round failed")
