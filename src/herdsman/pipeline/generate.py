"""Run one generation on a worker and turn its token stream into per-choice text deltas.

This is the stage that owns the engine request: whatever way it ends (done, stop string, client
gone, error), the engine is told to stop work nobody will read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from herdsman.api.errors import APIError
from herdsman.engines import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    TokenLogprobs,
)
from herdsman.engines import SamplingParams as EngineSampling
from herdsman.observability import METRICS
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.images import ImageInputs
from herdsman.pipeline.parsing import ParserSetup
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.routing import Worker

log = logging.getLogger(__name__)


class GenerationPlan(msgspec.Struct, kw_only=True):
    """What preparation decided: the ids to send and how to generate and post-process."""

    request_id: str
    input_ids: list[int]
    sampling: EngineSampling
    stops: list[str]
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = True
    # Batched completion prompts number their choices on from one prompt to the next.
    first_index: int = 0
    # Completions with echo: the prompt text, shown before the generated text.
    echo: str = ""
    # Chat: how the output is parsed (reasoning, tool calls).
    parsers: ParserSetup | None = None
    # Ids never shown as text even when special tokens are kept (EOS, stop ids).
    hidden_ids: frozenset[int] = frozenset()
    images: ImageInputs | None = None


Step = tuple[ChoiceOutput, str, TokenLogprobs | None, str | None]


class Generation:
    def __init__(self, ctx: ServingContext, plan: GenerationPlan, received_at: float) -> None:
        self._ctx = ctx
        self._plan = plan
        self._received_at = received_at
        tokenizer = ctx.model.tokenizer
        self.choices = [
            ChoiceOutput(
                plan.first_index + i,
                tokenizer,
                plan.stops,
                skip_special_tokens=plan.skip_special_tokens,
                keep_text=not plan.stream,
                keep_stop=plan.include_stop_str_in_output,
                hidden_ids=plan.hidden_ids,
            )
            for i in range(plan.sampling.n)
        ]
        self.prompt_tokens = len(plan.input_ids)
        self.cached_tokens = 0
        self._started: tuple[AsyncGenerator[EngineOutput, None], EngineOutput | None, Worker] | None
        self._started = None

    @property
    def plan(self) -> GenerationPlan:
        return self._plan

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.choices)

    async def start(self) -> None:
        """Pick a worker and wait for the engine's first output.

        Separate from ``run`` so that a request nobody can serve still gets a plain HTTP error
        (503, 502) rather than a stream that opens and fails.
        """
        plan = self._plan
        request = EngineRequest(
            request_id=plan.request_id,
            input_ids=plan.input_ids,
            sampling=plan.sampling,
            stream=plan.stream,
            images=plan.images,
        )
        self._started = await self._open(request)

    async def run(self) -> AsyncIterator[Step]:
        """Yield ``(choice, text_delta, logprobs, finish_reason)`` per step of a choice.

        ``logprobs`` covers the tokens of this step when the request asked for them;
        ``finish_reason`` is set on the choice's last step. It is part of the step, not read off
        the choice later, because a consumer may see a step after the choice has moved on.
        """
        if self._started is None:
            await self.start()
        assert self._started is not None
        outputs, out, worker = self._started
        remaining = len(self.choices)
        worker.in_flight += 1
        metrics = METRICS
        metrics.in_flight.inc()
        engine_started = last = now = time.perf_counter()
        first_token_at = 0.0
        try:
            while out is not None:
                if out.token_ids:
                    now = time.perf_counter()
                    if first_token_at:
                        metrics.itl.observe(now - last)
                    else:
                        first_token_at = now
                        metrics.ttft.observe(now - self._received_at)
                    last = now
                choice = self.choices[out.index]
                if out.prompt_logprobs is not None and choice.prompt_logprobs is None:
                    choice.prompt_logprobs = out.prompt_logprobs
                if not choice.done:
                    text = choice.push(out.token_ids) if out.token_ids else ""
                    logprobs = out.logprobs
                    if logprobs is not None:
                        choice.keep_logprobs(logprobs)
                    if out.finish_reason is not None and not choice.done:
                        text += choice.finish(_finish_reason(out), out.matched_token_id)
                        self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
                    if choice.done:
                        remaining -= 1
                        yield choice, text, logprobs, choice.finish_reason
                        if remaining == 0:
                            break
                    elif text or logprobs is not None:
                        yield choice, text, logprobs, None
                out = await anext(outputs, None)
            if remaining:
                raise EngineError("engine ended the stream before every choice finished")
        except EngineError as exc:
            if isinstance(exc, EngineUnavailable):
                worker.mark_failed(str(exc))
            raise APIError(502, f"engine failed: {exc}", code="engine_error") from exc
        finally:
            worker.in_flight -= 1
            metrics.in_flight.dec()
            metrics.stage.observe(now - engine_started, ("engine",))
            metrics.e2e.observe(time.perf_counter() - self._received_at)
            metrics.prompt_tokens.inc(self.prompt_tokens)
            metrics.generation_tokens.inc(self.completion_tokens)
            await outputs.aclose()
            # Stopped early (stop string, client gone, error): the engine must stop too.
            if remaining or any(isinstance(c.matched_stop, str) for c in self.choices):
                self._abort(worker)

    async def _open(
        self, request: EngineRequest
    ) -> tuple[AsyncGenerator[EngineOutput, None], EngineOutput | None, Worker]:
        """Open the engine stream, moving on to another worker while one refuses the request."""
        tried: set[int] = set()
        while True:
            healthy = [w for w in self._ctx.registry.healthy() if id(w) not in tried]
            worker = self._ctx.policy.select(healthy, request.input_ids)
            if worker is None:
                raise APIError(503, "no healthy engine worker is available", code="no_worker")
            tried.add(id(worker))
            outputs = worker.engine.generate(request)
            try:
                first = await anext(outputs, None)
            except EngineUnavailable as exc:
                worker.mark_failed(str(exc))
                continue
            except EngineError as exc:
                raise _rejected(exc) from exc
            except asyncio.CancelledError:
                await outputs.aclose()
                self._abort(worker)
                raise
            return outputs, first, worker

    async def discard(self) -> None:
        """Give up on a started generation that will never be run (a sibling failed)."""
        if self._started is not None:
            outputs, _, worker = self._started
            self._started = None
            await outputs.aclose()
            self._abort(worker)

    def _abort(self, worker: Worker) -> None:
        rid = self._plan.request_id
        self._ctx.spawn(worker.engine.abort([rid]), name=f"abort {rid}")


def _rejected(exc: EngineError) -> APIError:
    """An engine that refuses a request's parameters (INVALID_ARGUMENT) before producing
    anything is the client's error (400, as the engine's own HTTP server says); the rest is ours."""
    if exc.code == "invalid_argument":
        return APIError(400, f"the engine rejected the request: {exc}", code="invalid_request")
    return APIError(502, f"engine failed: {exc}", code="engine_error")


def _finish_reason(out: EngineOutput) -> str:
    reason = out.finish_reason or "stop"
    if reason == "length":
        return "length"
    if reason in ("abort", "error"):
        raise EngineError(f"engine finished the request with {reason!r}")
    return "stop"
