"""Everything a request needs that outlives it: the model, its tokenizer, the workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from herdsman.mcp import McpConfig
from herdsman.pipeline.admission import Admission
from herdsman.pipeline.errors import InvalidRequest, ModelNotFound
from herdsman.pipeline.images import ImageSupport
from herdsman.pipeline.retry import RetryPolicy
from herdsman.routing import RoundRobinPolicy, RoutingPolicy, WorkerRegistry
from herdsman.routing.kv_events import KvEventSubscriber
from herdsman.storage import Store
from herdsman.tokenizer import ModelTokenizer

if TYPE_CHECKING:
    from herdsman.mcp import McpPool
    from herdsman.routing.kv_index import KvIndex  # cache-aware routing only; imports numpy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServedModel:
    name: str
    tokenizer: ModelTokenizer
    max_context_length: int
    eos_token_ids: tuple[int, ...]
    created: int
    # Registry names; None when the model's output is not parsed that way.
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    # Vision models: fetching and preprocessing image inputs; None for text-only models.
    images: ImageSupport | None = None
    # How a request for this model picks one of its workers.
    policy: RoutingPolicy = field(default_factory=RoundRobinPolicy)
    # cache_aware: which of its workers hold which KV blocks (None for other policies).
    index: KvIndex | None = None
    # Policies that read the engines' loads get them from the engines' KV-event streams.
    wants_loads: bool = False
    # Disaggregated serving: how a request picks its pair's prefill and decode workers.
    prefill_policy: RoutingPolicy = field(default_factory=RoundRobinPolicy)
    decode_policy: RoutingPolicy = field(default_factory=RoundRobinPolicy)
    # What the model does: "generate"; "embed" (an embedding model); "classify" (a
    # sequence classifier; with one label, a cross-encoder that scores text pairs).
    task: str = "generate"
    # A classifier's label per class index.
    labels: tuple[str, ...] = ()
    # Embedding models trained to be cut short (Matryoshka): the dimensions they may be cut to
    # (empty: any); None when `dimensions` is refused.
    matryoshka: tuple[int, ...] | None = None

    def can(self, task: str) -> bool:
        if task == "score":
            return self.task == "embed" or (self.task == "classify" and len(self.labels) == 1)
        return task == self.task

    def require(self, task: str, endpoint: str) -> None:
        """Refuse an endpoint the model cannot serve, before any engine sees the request."""
        if self.can(task):
            return
        if task == "score" and self.task == "classify":
            raise InvalidRequest(
                f"the model '{self.name}' is a classifier with {len(self.labels)} labels; "
                f"{endpoint} needs an embedding model or a cross-encoder (one label)",
                "model",
                code="unsupported_task",
            )
        raise InvalidRequest(
            f"the model '{self.name}' is {_TASK_NAMES[self.task]}; it does not serve {endpoint}",
            "model",
            code="unsupported_task",
        )


_TASK_NAMES = {
    "generate": "a generative model",
    "embed": "an embedding model",
    "classify": "a classification model",
}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    # Seconds a generation may take at the engine, from the moment its request arrived.
    request_timeout: float = 1800.0
    # Prompts x n of one request.
    max_choices: int = 256
    max_images: int = 8
    # Seconds to fetch all of a request's images.
    image_fetch_timeout: float = 30.0
    # Seconds a request waits for a worker of its model when none is available (0: not at all).
    worker_wait_timeout: float = 30.0
    # Seconds a decode worker may wait for the prompt's KV once its prefill is done.
    kv_transfer_timeout: float = 60.0


class FleetControl(Protocol):
    """Changes to the fleet, made for every gateway process at once (by the supervisor)."""

    async def add_worker(
        self, url: str, wait: float, role: str = "regular", bootstrap_port: int | None = None
    ) -> tuple[int, dict[str, object]]:
        """Add the engine at ``url`` in a role; (HTTP status, body): 200 serving, 202 still
        loading."""
        ...

    async def remove_worker(self, worker_id: str) -> tuple[int, dict[str, object]]: ...


@dataclass(slots=True)
class ServingContext:
    """The models this gateway serves (by the name clients use), their workers, and the
    request-wide policies."""

    models: dict[str, ServedModel]
    registry: WorkerRegistry
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: RequestLimits = field(default_factory=RequestLimits)
    admission: Admission = field(default_factory=Admission)
    # How admin calls reach the supervisor (None: a context without one, as in unit tests).
    fleet: FleetControl | None = None
    # Engines added but not answering yet (still loading): URL -> what is known.
    pending: set[str] = field(default_factory=set)
    # Regular workers of a disaggregated model serve its requests while no pair can.
    pd_fallback: bool = False
    # Where responses and conversations are kept (None: --storage none).
    store: Store | None = None
    # MCP: the servers of --mcp-config, whether request-named servers may be private
    # addresses, and the sessions (made on first use: the mcp SDK is slow to import).
    mcp_config: McpConfig | None = None
    mcp_allow_private: bool = False
    mcp: McpPool | None = None
    # Engine URL -> its KV-event stream's consumer (feeding loads and the model's index).
    kv_streams: dict[str, KvEventSubscriber] = field(default_factory=dict)
    # Set once the process drains (SIGTERM): /readiness answers 503 from then on.
    draining: bool = False
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def served(self, name: str | None, task: str | None = None) -> ServedModel:
        """The model a request names; with no name, the only model (of the endpoint's ``task``,
        when given: an embeddings request needs no name beside one embedding model)."""
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name is None and task is not None:
            able = [m for m in self.models.values() if m.can(task)]
            if len(able) == 1:
                return able[0]
        model = self.models.get(name) if name is not None else None
        if model is None:
            names = ", ".join(sorted(self.models)) or "none yet"
            what = f"the model '{name}' does not exist" if name else "'model' is required"
            raise ModelNotFound(
                f"{what}; this gateway serves: {names}", "model", code="model_not_found"
            )
        return model

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run fire-and-forget work (an Abort) that must survive the request that started it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the fire-and-forget work in flight (the Aborts of streams
        cut at shutdown) before the engines are closed."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", task.get_name(), task.exception())
