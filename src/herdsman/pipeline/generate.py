"""Run one generation on a worker and turn its token stream into per-choice text deltas.

This is the stage that owns the engine request: whatever way it ends (done, stop string, client
gone, error), the engine is told to stop work nobody will read.

It also owns what happens when a worker fails the request. Until the first token has reached the
client (for a non-streamed response: until the response is written), a failed attempt is retried
with backoff, on another worker when there is one; after it, the client learns of the failure.
Each attempt's outcome feeds the worker's circuit breaker: the worker's own failures count,
back-pressure (RESOURCE_EXHAUSTED, refused streams) and the client's mistakes do not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import msgspec

from herdsman.access.usage import count_tokens
from herdsman.engines import (
    PUSH_DECLINED,
    PUSH_ENOUGH,
    PUSH_TAKEN,
    Bootstrap,
    EngineClient,
    EngineDeadlineExceeded,
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    TokenLogprobs,
)
from herdsman.engines import SamplingParams as EngineSampling
from herdsman.engines.disaggregated import (
    KvTransferTimeout,
    PrefillFailed,
    bootstrap_room,
    sglang_pair,
    vllm_pair,
)
from herdsman.observability import METRICS, tracing
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.errors import EngineTimeout, NoWorkerAvailable, RequestError
from herdsman.pipeline.failures import CLIENT_CODES, judge, request_error
from herdsman.pipeline.images import ImageInputs
from herdsman.pipeline.parsing import ParserSetup
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.pipeline.worker_choice import WorkerChoice
from herdsman.routing import RoutingRequest, Worker
from herdsman.routing.pairing import prefill_host

log = logging.getLogger(__name__)


class GenerationPlan(msgspec.Struct, kw_only=True):
    """What preparation decided: the ids to send and how to generate and post-process."""

    request_id: str
    input_ids: list[int]
    sampling: EngineSampling
    stops: list[str]
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Keep each choice's output ids for the response (vLLM's return_token_ids).
    return_token_ids: bool = False
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
    # The client's key for sticky routing (X-Routing-Key / X-SMG-Routing-Key), if any.
    routing_key: str | None = None


Step = tuple[ChoiceOutput, str, TokenLogprobs | None, str | None]


class StepSink(Protocol):
    """Takes a streamed generation's steps as the engine's outputs arrive (Generation.push_to),
    instead of ``run`` yielding them: no task wake-up and no generator hops per token."""

    def ready(self) -> bool:
        """Whether a step can be taken now (the client is there and reading)."""
        ...

    def step(
        self,
        choice: ChoiceOutput,
        text: str,
        logprobs: TokenLogprobs | None,
        finish_reason: str | None,
    ) -> None: ...


class _Attempt(msgspec.Struct):
    """One engine request of a generation: its stream, first output and worker (a pair's decode
    worker, with its prefill worker beside it)."""

    outputs: AsyncGenerator[EngineOutput, None]
    first: EngineOutput | None
    worker: Worker
    request_id: str
    prefill: Worker | None = None


class _Retry(Exception):
    """An attempt failed in a way another attempt may not (raised inside ``run`` only)."""


class Generation:
    def __init__(
        self,
        ctx: ServingContext,
        model: ServedModel,
        plan: GenerationPlan,
        received_at: float,
        *,
        push: bool = False,
    ) -> None:
        """``push``: the consumer will hand over a step sink (``push_to``) once its response
        starts; until then, and without one, every step comes through ``run``."""
        self._ctx = ctx
        self._model = model
        self._plan = plan
        self._routing = RoutingRequest(plan.input_ids, plan.routing_key)
        self._received_at = received_at
        self._deadline = received_at + ctx.limits.request_timeout
        tokenizer = model.tokenizer
        self.choices = [
            ChoiceOutput(
                plan.first_index + i,
                tokenizer,
                plan.stops,
                skip_special_tokens=plan.skip_special_tokens,
                keep_text=not plan.stream,
                keep_ids=plan.return_token_ids,
                keep_stop=plan.include_stop_str_in_output,
                hidden_ids=plan.hidden_ids,
                min_tokens=plan.sampling.min_tokens,
                prompt_ids=plan.input_ids,
            )
            for i in range(plan.sampling.n)
        ]
        self.prompt_tokens = len(plan.input_ids)
        self.cached_tokens = 0
        self.attempts = 0
        self._choice = WorkerChoice(ctx, model, self._routing, self._deadline)
        # A step went to a consumer that sends it on as it comes (a stream): no more retries.
        self._shown = False
        self._ttft_seen = False
        self._started: _Attempt | None = None
        self._tokens_held = 0
        # The current attempt: choices not finished yet, and when its tokens came.
        self._remaining = 0
        self._first_token_at = 0.0
        self._last_token_at = 0.0
        # Steps are pushed to the sink while ``run``'s consumer waits for one (see push_to).
        # Only plain streamed steps are pushed: no logprobs of any kind and no ids asked back
        # (their frames carry state the consumer's iterator keeps), one worker.
        self._sink: StepSink | None = None
        self.pushes = (
            push
            and plan.stream
            and not plan.return_token_ids
            and plan.sampling.logprobs is None
            and plan.sampling.prompt_logprobs is None
        )

    @property
    def plan(self) -> GenerationPlan:
        return self._plan

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.choices)

    def push_to(self, sink: StepSink) -> None:
        """Hand steps to ``sink`` while ``run``'s consumer waits for the next one.

        The consumer must treat a pushed step exactly as one it was yielded; it is pushed only
        while the consumer waits inside ``run`` with every step before it taken, so order holds.
        A step that cannot be pushed (the sink is not ready, the output is not a plain one) is
        yielded as usual.
        """
        if self.pushes:
            self._sink = sink

    async def start(self) -> None:
        """Pick a worker and wait for the engine's first output.

        Separate from ``run`` so that a request nobody can serve still gets a plain HTTP error
        (503, 502, 429) rather than a stream that opens and fails.
        """
        if not self._tokens_held:
            self._ctx.admission.take_prompt_tokens(self.prompt_tokens)
            self._tokens_held = self.prompt_tokens
            count_tokens(self.prompt_tokens)  # a key's tokens-per-minute limit
        try:
            self._started = await self._open(None)
        except BaseException:
            self._release_tokens()
            raise

    async def run(self) -> AsyncIterator[Step]:
        """Yield ``(choice, text_delta, logprobs, finish_reason)`` per step of a choice.

        ``logprobs`` covers the tokens of this step when the request asked for them;
        ``finish_reason`` is set on the choice's last step. It is part of the step, not read off
        the choice later, because a consumer may see a step after the choice has moved on.
        """
        try:
            if self._started is None:
                await self.start()
            metrics = METRICS
            metrics.in_flight.inc()
            try:
                while True:
                    attempt = self._started
                    assert attempt is not None
                    steps = self._steps(attempt)
                    try:
                        async for step in steps:
                            self._shown = self._plan.stream
                            yield step
                        return
                    except _Retry as retry:
                        self._started = None
                        for choice in self.choices:
                            choice.restart()
                        self.cached_tokens = 0
                        self._started = await self._open(retry.__cause__)
                    finally:
                        # At once, not when the generator is collected: its cleanup aborts.
                        await steps.aclose()
            finally:
                self._sink = None
                metrics.in_flight.dec()
                metrics.e2e.observe(time.perf_counter() - self._received_at)
                metrics.prompt_tokens.inc(self.prompt_tokens)
                metrics.generation_tokens.inc(self.completion_tokens)
                if tracing.enabled():
                    tracing.annotate(
                        {
                            "gen_ai.request.model": self._model.name,
                            "gen_ai.usage.input_tokens": self.prompt_tokens,
                            "gen_ai.usage.output_tokens": self.completion_tokens,
                        }
                    )
                count_tokens(self.completion_tokens)
        finally:
            self._release_tokens()

    async def _steps(self, attempt: _Attempt) -> AsyncIterator[Step]:
        """The steps of one attempt; raises ``_Retry`` when another attempt should follow."""
        outputs, out, worker = attempt.outputs, attempt.first, attempt.worker
        self._remaining = len(self.choices)
        worker.in_flight += 1
        metrics = METRICS
        engine_started = self._last_token_at = time.perf_counter()
        self._first_token_at = 0.0
        failure: EngineError | None = None
        try:
            while out is not None:
                step = self._take(out)
                if step is not None:
                    yield step
                    if not self._remaining:
                        break
                out = await anext(outputs, None)
            if self._remaining:
                raise EngineError("engine ended the stream before every choice finished")
        except EngineError as exc:
            failure = exc
            produced = self._first_token_at > 0.0 or self.completion_tokens > 0
            self._judge(worker, exc, produced=produced)
            if self._may_retry(exc):
                log.warning(
                    "request %s failed on %s (%s); retrying", attempt.request_id, worker.url, exc
                )
                METRICS.retries.inc()
                raise _Retry() from exc
            raise self._failure(exc) from exc
        finally:
            worker.in_flight -= 1
            metrics.stage.observe(self._last_token_at - engine_started, ("engine",))
            if tracing.enabled():
                tracing.stage(
                    "stream",
                    engine_started,
                    time.perf_counter(),
                    {
                        "herdsman.completion_tokens": self.completion_tokens,
                        "herdsman.failed": failure is not None,
                    },
                )
            if failure is None:
                worker.circuit.record_success()
            await outputs.aclose()
            # Stopped early (stop string, client gone, error): the engine must stop too.
            stopped = self._remaining or any(isinstance(c.matched_stop, str) for c in self.choices)
            if stopped and not isinstance(failure, EngineUnavailable):
                self._abort(worker, attempt.request_id, attempt.prefill)

    def _take(self, out: EngineOutput) -> Step | None:
        """One engine output into its choice; the step to show, if any."""
        if out.token_ids:
            now = time.perf_counter()
            if self._first_token_at:
                METRICS.itl.observe(now - self._last_token_at)
            else:
                self._first_token_at = now
                if not self._ttft_seen:
                    self._ttft_seen = True
                    METRICS.ttft.observe(now - self._received_at)
            self._last_token_at = now
        choice = self.choices[out.index]
        if out.prompt_logprobs is not None and choice.prompt_logprobs is None:
            # Every choice has the same prompt, and vLLM sends its logprobs with only one
            # choice when it coalesces several choices' outputs into one.
            for sibling in self.choices:
                if sibling.prompt_logprobs is None:
                    sibling.prompt_logprobs = out.prompt_logprobs
        if choice.done:
            return None
        before = choice.token_count
        text = choice.push(out.token_ids) if out.token_ids else ""
        logprobs = out.logprobs
        if logprobs is not None:
            if choice.done:  # a stop string: the tokens after it are not output
                logprobs = _first_logprobs(logprobs, choice.token_count - before)
            choice.keep_logprobs(logprobs)
        if out.finish_reason is not None and not choice.done:
            text += choice.finish(_finish_reason(out), out.matched_token_id)
            self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
        if choice.done:
            self._remaining -= 1
            return choice, text, logprobs, choice.finish_reason
        if text or logprobs is not None:
            return choice, text, logprobs, None
        return None

    def _push(self, out: EngineOutput) -> int:
        """The engine's push sink: a plain output taken straight to the step sink."""
        sink = self._sink
        if sink is None or out.index >= len(self.choices) or not sink.ready():
            return PUSH_DECLINED
        step = self._take(out)
        if step is not None:
            self._shown = True
            sink.step(*step)
        return PUSH_TAKEN if self._remaining else PUSH_ENOUGH

    async def _open(self, previous: BaseException | None) -> _Attempt:
        """Open an engine stream and wait for its first output, retrying while that is allowed.

        ``previous`` is the engine failure that ended the last attempt, if any (a retry).
        """
        plan = self._plan
        last = previous if isinstance(previous, EngineError) else None
        if last is not None:
            await self._backoff()
        routing_started = 0.0  # this attempt's routing began (waits for a worker included)
        while True:
            now = time.perf_counter()
            routing_started = routing_started or now
            time_left = self._deadline - now
            if time_left <= 0:
                raise EngineTimeout(
                    f"the request did not finish within {self._ctx.limits.request_timeout:g}s",
                    code="timeout",
                )
            picked = self._choice.pick()
            if picked is None and last is None and await self._choice.wait_for_worker():
                continue
            if picked is None:
                if last is not None:
                    raise self._failure(last) from last
                raise NoWorkerAvailable(self._choice.no_worker_reason(), code="no_worker")
            worker, prefill = picked
            self.attempts += 1
            if tracing.enabled():
                self._trace_routing(routing_started, worker, prefill)
            routing_started = 0.0
            self._choice.tried(worker)
            request_id = (
                plan.request_id if self.attempts == 1 else f"{plan.request_id}-{self.attempts}"
            )
            request = EngineRequest(
                request_id=request_id,
                input_ids=plan.input_ids,
                sampling=plan.sampling,
                # Stop strings are found here, not by the engine: it streams even to a client
                # that does not, so that it is stopped where the stop string ends.
                stream=plan.stream or bool(plan.stops),
                images=plan.images,
                timeout=time_left,
                data_parallel_rank=worker.dp_rank,
            )
            worker.circuit.on_attempt()
            worker.routed()
            # The worker that computes the prompt: a pair's prefill, else the worker itself.
            computing = prefill or worker
            if prefill is not None:
                self._choice.tried(prefill)
                prefill.circuit.on_attempt()
                prefill.routed()
            prefill_tokens = self._routing.prefill_tokens
            self._routing.prefill_tokens = 0
            computing.prefilling += prefill_tokens
            # The engine's time to first output (a live span: the engine call is its child).
            ttft = tracing.start_stage("engine.ttft", {"herdsman.engine_request_id": request_id})
            outputs = self._generate(worker, prefill, request)
            try:
                try:
                    first = await anext(outputs, None)
                except BaseException as exc:
                    tracing.end_stage(ttft, exc)
                    raise
                finally:
                    computing.prefilling -= prefill_tokens
                tracing.end_stage(ttft)
            except asyncio.CancelledError:
                worker.circuit.record_neutral()
                if prefill is not None:
                    prefill.circuit.record_neutral()
                await outputs.aclose()
                self._abort(worker, request_id, prefill)
                raise
            except EngineError as exc:
                await outputs.aclose()
                failed, cause = worker, exc
                if isinstance(exc, PrefillFailed) and prefill is not None:
                    failed, cause = prefill, exc.cause
                    worker.circuit.record_neutral()
                elif prefill is not None:
                    prefill.circuit.record_neutral()
                self._judge(failed, cause, produced=False)
                if isinstance(exc, EngineDeadlineExceeded):
                    self._abort(worker, request_id, prefill)
                if not self._may_retry(exc):
                    raise self._failure(exc) from exc
                log.info("request %s: %s on %s; retrying", request_id, exc, failed.url)
                METRICS.retries.inc()
                last = exc
                await self._backoff()
                continue
            if prefill is not None:
                prefill.circuit.record_success()
            return _Attempt(outputs, first, worker, request_id, prefill)

    def _trace_routing(self, started: float, worker: Worker, prefill: Worker | None) -> None:
        attributes = {
            "gen_ai.request.model": self._model.name,
            "herdsman.worker": worker.url,
            "herdsman.attempt": self.attempts,
        }
        if prefill is not None:
            attributes["herdsman.prefill_worker"] = prefill.url
        tracing.stage("routing", started, time.perf_counter(), attributes)

    def _generate(
        self, worker: Worker, prefill: Worker | None, request: EngineRequest
    ) -> AsyncGenerator[EngineOutput, None]:
        if prefill is None:
            if self.pushes:
                return worker.engine.generate(request, push=self._push)
            return worker.engine.generate(request)
        timeout = self._ctx.limits.kv_transfer_timeout
        if worker.engine.backend == "sglang":
            assert prefill.bootstrap_port is not None  # pairing refuses a prefill without one
            room = bootstrap_room(random.getrandbits(31), prefill.dp_size, prefill.dp_rank)
            return sglang_pair(
                prefill.engine,
                worker.engine,
                request,
                bootstrap=Bootstrap(prefill_host(prefill.url), prefill.bootstrap_port, room),
                prefill_rank=prefill.dp_rank,
                transfer_timeout=timeout,
                abort=self._abort_on,
            )
        return vllm_pair(
            prefill.engine,
            worker.engine,
            request,
            prefill_rank=prefill.dp_rank,
            transfer_timeout=timeout,
            abort=self._abort_on,
        )

    def _may_retry(self, exc: EngineError) -> bool:
        if self._shown or exc.code in CLIENT_CODES or isinstance(exc, EngineDeadlineExceeded):
            return False
        if isinstance(exc, KvTransferTimeout):
            return False  # both engines were aborted; the client hears why
        if self.attempts > self._ctx.retry.max_retries:
            return False
        return self._deadline - time.perf_counter() > 0

    async def _backoff(self) -> None:
        delay = self._ctx.retry.backoff(self.attempts - 1)
        await asyncio.sleep(min(delay, max(0.0, self._deadline - time.perf_counter())))

    @staticmethod
    def _judge(worker: Worker, exc: EngineError, *, produced: bool) -> None:
        judge(worker, exc, produced=produced)

    def _failure(self, exc: EngineError) -> RequestError:
        return request_error(exc, self._ctx.limits.request_timeout)

    async def discard(self) -> None:
        """Give up on a started generation that will never be run (a sibling failed)."""
        if self._started is not None:
            attempt = self._started
            self._started = None
            await attempt.outputs.aclose()
            attempt.worker.circuit.record_neutral()
            self._abort(attempt.worker, attempt.request_id, attempt.prefill)
        self._release_tokens()

    def _release_tokens(self) -> None:
        if self._tokens_held:
            self._ctx.admission.release_prompt_tokens(self._tokens_held)
            self._tokens_held = 0

    def _abort(self, worker: Worker, request_id: str, prefill: Worker | None = None) -> None:
        self._abort_on(worker.engine, request_id)
        if prefill is not None:
            self._abort_on(prefill.engine, request_id)

    def _abort_on(self, engine: EngineClient, request_id: str) -> None:
        self._ctx.spawn(engine.abort([request_id]), name=f"abort {request_id}")


def _first_logprobs(logprobs: TokenLogprobs, count: int) -> TokenLogprobs:
    if count >= len(logprobs.token_ids):
        return logprobs
    ids, values, top = logprobs.token_ids, logprobs.logprobs, logprobs.top
    return TokenLogprobs(ids[:count], values[:count], top[:count])


def _finish_reason(out: EngineOutput) -> str:
    reason = out.finish_reason or "stop"
    if reason == "length":
        return "length"
    if reason in ("abort", "error"):
        raise EngineError(f"engine finished the request with {reason!r}")
    return "stop"
