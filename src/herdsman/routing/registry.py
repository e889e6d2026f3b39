"""The engine workers this gateway knows, with what each serves and whether it is healthy.

A worker is what a routing policy chooses: one engine, or one data-parallel rank of an engine
(ranks share the engine's connection and health, each has its own load and cache). Its id is
derived from its URL and rank, so every gateway process names it the same.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from herdsman.engines import EngineClient, ModelInfo
from herdsman.routing.circuit import CircuitBreaker, CircuitConfig
from herdsman.routing.load import WorkerLoad

log = logging.getLogger(__name__)


def worker_id(url: str, dp_rank: int | None = None) -> str:
    """A short, stable id: the same in every process and across restarts."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"w-{digest}" if dp_rank is None else f"w-{digest}-dp{dp_rank}"


# An engine-reported load older than this is not trusted over this process's own count.
_LOAD_FRESH_SECONDS = 5.0


@dataclass(slots=True, eq=False)
class Worker:
    url: str
    engine: EngineClient
    model: ModelInfo
    # The name clients use for the model it serves.
    model_name: str = ""
    # The data-parallel rank this worker is (None: the engine is not data parallel).
    dp_rank: int | None = None
    # How many ranks its engine has (a prefill's rank follows from the bootstrap room).
    dp_size: int = 1
    # Disaggregated serving: "prefill", "decode", or "regular" (serves whole requests).
    role: str = "regular"
    # SGLang prefill workers: the port of their bootstrap server (the KV handoff).
    bootstrap_port: int | None = None
    # What a prefill and a decode must agree on to pair (routing.pairing).
    pairing: dict[str, str] = field(default_factory=dict)
    id: str = ""
    # Decided by health checks (in the supervisor, broadcast to every process).
    healthy: bool = True
    # Requests this process has running on the worker now.
    in_flight: int = 0
    # The engine's own account of its load, and what this process sent since that record.
    load: WorkerLoad = field(default_factory=WorkerLoad)
    routed_since_record: int = 0
    # Prompt tokens this process sent that the worker had not cached, until their first token.
    prefilling: int = 0
    # This process's own record of how the worker serves its requests.
    circuit: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(CircuitConfig()))
    # Told about every health change this process decides itself (health checks).
    on_change: Callable[[Worker, str], None] | None = field(default=None, repr=False)
    # Told when a request finds the worker unreachable: the supervisor checks it at once.
    on_suspect: Callable[[Worker, str], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = worker_id(self.url, self.dp_rank)

    @property
    def available(self) -> bool:
        """Healthy, and its circuit lets a request through."""
        return self.healthy and self.circuit.allows()

    def load_score(self) -> float:
        """Requests on the worker as far as this process can tell: the engine's running and
        waiting requests (from its last record) plus what this process sent since, or this
        process's own count when the engine reports nothing (recently)."""
        load = self.load
        if load.updated_at and time.monotonic() - load.updated_at < _LOAD_FRESH_SECONDS:
            return load.running + load.waiting + self.routed_since_record
        return self.in_flight

    def prefill_backlog(self) -> int:
        """Prompt tokens waiting for prefill on the worker as far as this process can tell: the
        engine's last count (every process's requests, when fresh), or this process's own
        requests still prefilling there when they are more (sent after that record)."""
        load = self.load
        if (
            load.waiting_uncached_tokens
            and load.updated_at
            and time.monotonic() - load.updated_at < _LOAD_FRESH_SECONDS
        ):
            return max(load.waiting_uncached_tokens, self.prefilling)
        return self.prefilling

    def update_load(self, load: WorkerLoad) -> None:
        self.load = load
        self.routed_since_record = 0

    def routed(self) -> None:
        """A request was just sent here (counted until the engine's next load record)."""
        self.routed_since_record += 1

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
        self._workers: dict[str, Worker] = {}

    def add(self, worker: Worker) -> None:
        self._workers[worker.id] = worker

    def remove(self, worker_id: str) -> Worker | None:
        return self._workers.pop(worker_id, None)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    def by_url(self, url: str) -> list[Worker]:
        """Every rank of the engine at ``url``."""
        return [w for w in self._workers.values() if w.url == url]

    def for_model(self, model_name: str) -> list[Worker]:
        return [w for w in self._workers.values() if w.model_name == model_name]

    def healthy(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.healthy]

    def available(self, model_name: str | None = None, role: str | None = None) -> list[Worker]:
        """Workers that can take a request now, of a model and a role (None: any)."""
        return [
            w
            for w in self._workers.values()
            if w.available
            and (model_name is None or w.model_name == model_name)
            and (role is None or w.role == role)
        ]

    def disaggregated(self, model_name: str) -> bool:
        """Whether the model has prefill or decode workers (its requests go to pairs)."""
        return any(
            w.role != "regular" and w.model_name == model_name for w in self._workers.values()
        )

    async def close(self) -> None:
        """Close every engine connection once (data-parallel ranks share one)."""
        engines = {id(w.engine): w.engine for w in self._workers.values()}
        for engine in engines.values():
            await engine.close()
