"""Which worker serves a generation's next attempt: one of the model's available workers (or a
prefill/decode pair), chosen by the model's policies, preferring those the request has not tried.
"""

from __future__ import annotations

import asyncio
import time

from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.routing import RoutingRequest, Worker
from herdsman.routing.pairing import incompatibility

# While no worker is available: how often to look again (only then, never per request).
_WORKER_POLL_SECONDS = 0.1


class WorkerChoice:
    """The choice of worker over a generation's attempts."""

    def __init__(
        self, ctx: ServingContext, model: ServedModel, routing: RoutingRequest, deadline: float
    ) -> None:
        self._ctx = ctx
        self._model = model
        self._routing = routing
        self._deadline = deadline
        self._tried: set[int] = set()
        self._wait_end: float | None = None

    def tried(self, worker: Worker) -> None:
        """``worker`` took an attempt: the next one prefers another."""
        self._tried.add(id(worker))

    def pick(self) -> tuple[Worker, Worker | None] | None:
        """The worker (or the decode worker and its prefill worker) for the next attempt: one
        not tried yet when there is one, else any that is available again."""
        registry, model = self._ctx.registry, self._model
        if registry.disaggregated(model.name):
            pair = self._pick_pair()
            if pair is not None or not self._ctx.pd_fallback:
                return pair
        available = registry.available(model.name, "regular")
        fresh = [w for w in available if id(w) not in self._tried]
        worker = model.policy.select(fresh or available, self._routing)
        return None if worker is None else (worker, None)

    def _pick_pair(self) -> tuple[Worker, Worker] | None:
        """A decode worker and a prefill worker that can pair (routing.pairing)."""
        registry, model = self._ctx.registry, self._model
        decodes = registry.available(model.name, "decode")
        prefills = registry.available(model.name, "prefill")
        if not decodes:
            return None
        candidates = [w for w in prefills if id(w) not in self._tried] or prefills
        while candidates:
            prefill = model.prefill_policy.select(candidates, self._routing)
            if prefill is None:
                return None
            compatible = [d for d in decodes if incompatibility(prefill, d) is None]
            if compatible:
                fresh = [d for d in compatible if id(d) not in self._tried]
                decode = model.decode_policy.select(fresh or compatible, self._routing)
                if decode is not None:
                    return decode, prefill
            candidates = [w for w in candidates if w is not prefill]
        return None

    def servable(self) -> bool:
        """Whether a worker (or a pair) of the model can take a request now."""
        registry, name = self._ctx.registry, self._model.name
        if registry.disaggregated(name):
            if registry.available(name, "decode") and registry.available(name, "prefill"):
                return True
            if not self._ctx.pd_fallback:
                return False
        return bool(registry.available(name, "regular"))

    def no_worker_reason(self) -> str:
        registry, name = self._ctx.registry, self._model.name
        if registry.disaggregated(name) and not self._ctx.pd_fallback:
            prefills = registry.available(name, "prefill")
            decodes = registry.available(name, "decode")
            if prefills and decodes:
                return (
                    f"no prefill and decode worker of '{name}' can pair "
                    f"({incompatibility(prefills[0], decodes[0])}); see GET /workers"
                )
            return f"no healthy prefill/decode pair serves '{name}' now"
        return f"no healthy engine worker serves '{name}' now"

    async def wait_for_worker(self) -> bool:
        """No worker of the model can take a request now, but one may soon (an engine still
        loading, restarting, or its circuit about to let trials through): wait for it, within
        the worker wait and the request's deadline. True when one is available. Workers that
        health checks found down are not waited for: that is a 503 now, not in 30 s."""
        registry, name = self._ctx.registry, self._model.name
        coming = self._ctx.pending or any(
            w.healthy and not w.available for w in registry.for_model(name)
        )
        if not coming:
            return False
        if self._wait_end is None:
            limit = self._ctx.limits.worker_wait_timeout
            self._wait_end = min(time.perf_counter() + limit, self._deadline)
        while time.perf_counter() < self._wait_end:
            await asyncio.sleep(_WORKER_POLL_SECONDS)
            if self.servable():
                return True
        return False
