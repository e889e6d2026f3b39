"""Everything a request needs that outlives it: the model, its tokenizer, the workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from herdsman.pipeline.admission import Admission
from herdsman.pipeline.images import ImageSupport
from herdsman.pipeline.retry import RetryPolicy
from herdsman.routing import RoutingPolicy, WorkerRegistry
from herdsman.tokenizer import ModelTokenizer

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


@dataclass(frozen=True, slots=True)
class RequestLimits:
    # Seconds a generation may take at the engine, from the moment its request arrived.
    request_timeout: float = 1800.0
    # Prompts x n of one request.
    max_choices: int = 256
    max_images: int = 8
    # Seconds to fetch all of a request's images.
    image_fetch_timeout: float = 30.0


@dataclass(slots=True)
class ServingContext:
    model: ServedModel
    registry: WorkerRegistry
    policy: RoutingPolicy
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: RequestLimits = field(default_factory=RequestLimits)
    admission: Admission = field(default_factory=Admission)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run fire-and-forget work (an Abort) that must survive the request that started it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", task.get_name(), task.exception())
