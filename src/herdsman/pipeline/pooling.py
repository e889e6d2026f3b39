"""Run a pooling model (embeddings, classifier scores) on the model's workers.

Each input is one Embed call: the protocols carry one input per call. A request's inputs go out
concurrently, at most ``MAX_CONCURRENT_INPUTS`` at a time, so that a batch of 2,048 texts does not
open 2,048 streams at once; each input is retried on another worker, with backoff, as a
generation is before its first token. When one input fails for good, the others are cancelled and
the engines told to abort them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from herdsman.engines import EmbedOutput, EmbedRequest, EngineError, EngineUnavailable
from herdsman.observability import METRICS
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.errors import EngineTimeout, InvalidRequest, NoWorkerAvailable
from herdsman.pipeline.failures import CLIENT_CODES, judge, request_error
from herdsman.routing import RoutingRequest, Worker

log = logging.getLogger(__name__)

# Inputs of one request in flight at once (the engine batches them; more only queue there).
MAX_CONCURRENT_INPUTS = 32


class PoolingInput(msgspec.Struct, frozen=True):
    """One tokenized input: a text, or a pair of texts encoded as the model's tokenizer pairs
    them (with each id's segment in ``token_type_ids``)."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None


async def pool(
    ctx: ServingContext,
    model: ServedModel,
    request_id: str,
    inputs: list[PoolingInput],
    *,
    task: str,
    received_at: float,
    routing_key: str | None = None,
) -> list[EmbedOutput]:
    """The engine's output for every input, in order. ``task`` is what the model's pooler must
    run ("embed" or "classify"): a worker whose protocol cannot reach it is not used."""
    if not inputs:
        raise InvalidRequest("the input is empty", "input")
    for item in inputs:
        _check_length(model, item)
    deadline = received_at + ctx.limits.request_timeout
    slots = asyncio.Semaphore(MAX_CONCURRENT_INPUTS)

    async def one(index: int, item: PoolingInput) -> EmbedOutput:
        async with slots:
            rid = request_id if len(inputs) == 1 else f"{request_id}-{index}"
            return await _run_one(ctx, model, rid, item, task, deadline, routing_key)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, item)) for i, item in enumerate(inputs)]
    except BaseExceptionGroup as failed:
        # One input failed for good: its error is the request's (the rest were cancelled).
        raise _first_error(failed) from None
    finally:
        METRICS.stage.observe(time.perf_counter() - started, ("engine",))
    METRICS.prompt_tokens.inc(sum(len(item.input_ids) for item in inputs))
    return [t.result() for t in tasks]


async def text_input(
    model: ServedModel,
    text: str,
    *,
    truncate: int | None,
    side: str | None = None,
    add_special_tokens: bool = True,
) -> PoolingInput:
    """A text's ids as the model's tokenizer gives them, truncated as vLLM's
    ``truncate_prompt_tokens`` does: by the tokenizer (its special tokens kept, its
    ``truncation_side``), or, when the request names a ``side``, by cutting the whole encoding."""
    tokenizer = model.tokenizer
    limit = _limit(model, truncate)
    if limit is None or side is not None:
        ids = await tokenizer.encode_async(text, add_special_tokens=add_special_tokens)
        return PoolingInput(_cut(ids, limit, side or tokenizer.truncation_side))
    raw = tokenizer.tokenizer
    encoding = raw.encode(text, add_special_tokens=False)
    room = limit - raw.num_special_tokens_to_add(False) if add_special_tokens else limit
    if len(encoding.ids) > room:
        encoding.truncate(max(room, 0), direction=tokenizer.truncation_side)
    if add_special_tokens:
        encoding = raw.post_process(encoding)
    return PoolingInput(encoding.ids)


def ids_input(
    model: ServedModel, ids: list[int], *, truncate: int | None, side: str | None = None
) -> PoolingInput:
    vocab = model.tokenizer.vocab_size
    if any(i >= vocab for i in ids):
        raise InvalidRequest(f"token ids must be in [0, {vocab})", "input")
    return PoolingInput(_cut(ids, _limit(model, truncate), side or model.tokenizer.truncation_side))


def _cut(ids: list[int], limit: int | None, side: str) -> list[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[-limit:] if side == "left" else ids[:limit]


def pair_input(
    model: ServedModel, first: str, second: str, *, truncate: int | None
) -> PoolingInput:
    """Two texts encoded as one input the way the model's tokenizer pairs them (BERT: [CLS] a
    [SEP] b [SEP], the second segment's ids of type 1); ``truncate`` shortens the longer text
    first, token by token, as transformers' ``longest_first`` truncation does."""
    tokenizer = model.tokenizer
    raw = tokenizer.tokenizer
    a = raw.encode(first, add_special_tokens=False)
    b = raw.encode(second, add_special_tokens=False)
    limit = _limit(model, truncate)
    if limit is not None:
        room = max(0, limit - raw.num_special_tokens_to_add(True))
        keep_a, keep_b = len(a.ids), len(b.ids)
        while keep_a + keep_b > room:
            if keep_a > keep_b:
                keep_a -= 1
            else:
                keep_b -= 1
        if keep_a < len(a.ids):
            a.truncate(keep_a, direction=tokenizer.truncation_side)
        if keep_b < len(b.ids):
            b.truncate(keep_b, direction=tokenizer.truncation_side)
    pair = raw.post_process(a, b, add_special_tokens=True)
    types = list(pair.type_ids)
    return PoolingInput(pair.ids, types if any(types) else None)


def _limit(model: ServedModel, truncate: int | None) -> int | None:
    if truncate is None:
        return None
    if truncate == -1:
        return model.max_context_length
    if truncate < 1:
        raise InvalidRequest(
            "truncate_prompt_tokens must be -1 (the model's maximum) or at least 1",
            "truncate_prompt_tokens",
        )
    if truncate > model.max_context_length:
        raise InvalidRequest(
            f"truncate_prompt_tokens ({truncate}) is more than this model's maximum context "
            f"length ({model.max_context_length})",
            "truncate_prompt_tokens",
        )
    return truncate


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _check_length(model: ServedModel, item: PoolingInput) -> None:
    if not item.input_ids:
        raise InvalidRequest("an input has no tokens", "input")
    if len(item.input_ids) > model.max_context_length:
        raise InvalidRequest(
            f"this model's maximum context length is {model.max_context_length} tokens, but an "
            f"input has {len(item.input_ids)} tokens; shorten it or set truncate_prompt_tokens",
            "input",
        )


def _workers(ctx: ServingContext, model: ServedModel, task: str) -> list[Worker]:
    """Workers of the model whose protocol can run ``task``."""
    return [
        w
        for w in ctx.registry.available(model.name, "regular")
        if task in getattr(w.engine, "pooling_tasks", ())
    ]


def _unservable(ctx: ServingContext, model: ServedModel, task: str) -> str | None:
    """Why no worker of the model could ever run ``task`` (a client error, not a 503)."""
    workers = [w for w in ctx.registry.for_model(model.name) if w.role == "regular"]
    if workers and not any(task in getattr(w.engine, "pooling_tasks", ()) for w in workers):
        backends = ", ".join(sorted({w.engine.backend for w in workers}))
        return (
            f"the model '{model.name}' is served by {backends} workers, whose gRPC protocol "
            f"runs no '{task}' pooling (vllm_engine.proto's Embed runs the 'embed' task only)"
        )
    return None


async def _run_one(
    ctx: ServingContext,
    model: ServedModel,
    request_id: str,
    item: PoolingInput,
    task: str,
    deadline: float,
    routing_key: str | None,
) -> EmbedOutput:
    routing = RoutingRequest(item.input_ids, routing_key)
    tried: set[int] = set()
    attempts = 0
    last: EngineError | None = None
    while True:
        time_left = deadline - time.perf_counter()
        if time_left <= 0:
            raise EngineTimeout(
                f"the request did not finish within {ctx.limits.request_timeout:g}s",
                code="timeout",
            )
        available = _workers(ctx, model, task)
        fresh = [w for w in available if id(w) not in tried]
        worker = model.policy.select(fresh or available, routing)
        if worker is None:
            if last is not None:
                raise request_error(last, ctx.limits.request_timeout) from last
            reason = _unservable(ctx, model, task)
            if reason is not None:
                raise InvalidRequest(reason, "model", code="unsupported_task")
            raise NoWorkerAvailable(
                f"no healthy engine worker serves '{model.name}' now", code="no_worker"
            )
        attempts += 1
        tried.add(id(worker))
        rid = request_id if attempts == 1 else f"{request_id}-{attempts}"
        request = EmbedRequest(
            request_id=rid,
            input_ids=item.input_ids,
            token_type_ids=item.token_type_ids,
            timeout=time_left,
            data_parallel_rank=worker.dp_rank,
        )
        worker.circuit.on_attempt()
        worker.routed()
        worker.in_flight += 1
        try:
            output = await worker.engine.embed(request)
        except asyncio.CancelledError:
            worker.circuit.record_neutral()
            ctx.spawn(worker.engine.abort([rid]), name=f"abort {rid}")
            raise
        except EngineError as exc:
            judge(worker, exc, produced=False)
            if not isinstance(exc, EngineUnavailable) and exc.code == "deadline_exceeded":
                ctx.spawn(worker.engine.abort([rid]), name=f"abort {rid}")
            if (
                exc.code in CLIENT_CODES
                or exc.code == "deadline_exceeded"
                or attempts > ctx.retry.max_retries
            ):
                raise request_error(exc, ctx.limits.request_timeout) from exc
            log.info("pooling request %s: %s on %s; retrying", rid, exc, worker.url)
            METRICS.retries.inc()
            last = exc
            delay = ctx.retry.backoff(attempts - 1)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
            continue
        finally:
            worker.in_flight -= 1
        worker.circuit.record_success()
        return output
