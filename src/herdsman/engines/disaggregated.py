"""One generation served by two engines: a prefill worker computes the prompt's KV cache and hands
it to a decode worker, which streams the output. Each protocol pairs them its own way:

- SGLang (its PD router's dual dispatch): the same request goes to both at once, with a bootstrap
  room that names it on the prefill's bootstrap server; the decode fetches the KV from there. The
  prefill's own answer (its first token) is drained, not shown.
- vLLM (its disaggregation proxies' two steps): the prefill runs the request for one token with
  ``do_remote_decode``, and returns the KV connector's handoff; the decode request carries it.

The decode stream is the caller's. A prefill that fails before the decode produced anything
raises ``PrefillFailed`` (another prefill worker may succeed); a decode whose KV does not arrive
within the transfer bound raises ``KvTransferTimeout``. Either way both engines are told to abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable

import msgspec

from herdsman.engines.base import (
    Bootstrap,
    EngineClient,
    EngineError,
    EngineOutput,
    EngineRequest,
)

log = logging.getLogger(__name__)

# What vLLM's proxies send the prefill: compute the prompt and keep its KV for a remote decode.
REMOTE_DECODE = json.dumps(
    {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
)

# Once the decode streams, a prefill answer still missing is waited for this long (it is only
# drained, for its errors), then left.
_PREFILL_DRAIN_SECONDS = 5.0

# A decode that failed before its first output: how long its prefill's verdict is waited for.
_PREFILL_VERDICT_SECONDS = 1.0

Abort = Callable[[EngineClient, str], None]


class PrefillFailed(EngineError):
    """The prefill half failed before the decode produced anything: the pair is given up."""

    def __init__(self, cause: EngineError) -> None:
        super().__init__(f"prefill worker: {cause}", code=cause.code)
        self.cause = cause


class KvTransferTimeout(EngineError):
    """The decode worker did not receive the prompt's KV cache within the bound."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the decode worker did not receive the KV cache from the prefill worker within "
            f"{seconds:g}s",
            code="kv_transfer_timeout",
        )


def bootstrap_room(random_bits: int, dp_size: int, dp_rank: int | None) -> int:
    """A room (SGLang's is an int32) that a data-parallel prefill routes to ``dp_rank``: SGLang
    picks the prefill rank as ``room % dp_size`` (follow_bootstrap_room), so the rank the
    policy chose is encoded in the room rather than chosen beside it."""
    room = random_bits & 0x7FFF_FFFF
    if dp_size <= 1 or dp_rank is None:
        return room
    room -= room % dp_size
    if room + dp_rank > 0x7FFF_FFFF:
        room -= dp_size
    return room + dp_rank


async def sglang_pair(
    prefill: EngineClient,
    decode: EngineClient,
    request: EngineRequest,
    *,
    bootstrap: Bootstrap,
    prefill_rank: int | None,
    transfer_timeout: float,
    abort: Abort,
) -> AsyncGenerator[EngineOutput, None]:
    """SGLang's dual dispatch; yields the decode's outputs."""
    decode_request = msgspec.structs.replace(request, bootstrap=bootstrap)
    prefill_request = msgspec.structs.replace(
        request, bootstrap=bootstrap, data_parallel_rank=prefill_rank
    )
    prefill_done = asyncio.ensure_future(_drain(prefill.generate(prefill_request)))
    outputs = decode.generate(decode_request)
    first: EngineOutput | None = None
    try:
        first = await _first_decode_output(
            outputs, prefill_done, transfer_timeout, decode, prefill, request.request_id, abort
        )
        if first is None:
            return
        yield first
        async for output in outputs:
            yield output
    finally:
        await outputs.aclose()
        await _finish_drain(prefill_done, prefill.address, request.request_id)


async def _first_decode_output(
    outputs: AsyncGenerator[EngineOutput, None],
    prefill_done: asyncio.Future[None],
    transfer_timeout: float,
    decode: EngineClient,
    prefill: EngineClient,
    request_id: str,
    abort: Abort,
) -> EngineOutput | None:
    """The decode's first output, unless the prefill fails first or the KV never comes."""
    first = asyncio.ensure_future(anext(outputs, None))
    try:
        done, _ = await asyncio.wait({first, prefill_done}, return_when=asyncio.FIRST_COMPLETED)
        if first not in done:
            error = prefill_done.exception()
            if isinstance(error, EngineError):
                abort(decode, request_id)
                raise PrefillFailed(error) from error
            if error is not None:
                raise error
            # The prefill is done: its KV is on its way to the decode, within the bound.
            done, _ = await asyncio.wait({first}, timeout=transfer_timeout)
            if first not in done:
                abort(decode, request_id)
                abort(prefill, request_id)
                raise KvTransferTimeout(transfer_timeout)
        error = first.exception()
        if isinstance(error, EngineError):
            # A decode that fails while its prefill fails failed for want of the KV: the prefill
            # is the worker to blame (and to avoid on the retry).
            await asyncio.wait({prefill_done}, timeout=_PREFILL_VERDICT_SECONDS)
            cause = prefill_done.exception() if prefill_done.done() else None
            if isinstance(cause, EngineError):
                raise PrefillFailed(cause) from cause
        return first.result()
    finally:
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first


async def _drain(outputs: AsyncGenerator[EngineOutput, None]) -> None:
    try:
        async for _ in outputs:
            pass
    finally:
        await outputs.aclose()


async def _finish_drain(prefill_done: asyncio.Future[None], address: str, request_id: str) -> None:
    """The prefill's answer once the decode has ended: its errors are reported, not raised (the
    client's output came from the decode)."""
    if not prefill_done.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait({prefill_done}, timeout=_PREFILL_DRAIN_SECONDS)
    if not prefill_done.done():
        prefill_done.cancel()
        with contextlib.suppress(BaseException):
            await prefill_done
        return
    if not prefill_done.cancelled() and prefill_done.exception() is not None:
        log.warning(
            "request %s: prefill worker %s failed after the decode started: %s",
            request_id,
            address,
            prefill_done.exception(),
        )


async def vllm_pair(
    prefill: EngineClient,
    decode: EngineClient,
    request: EngineRequest,
    *,
    prefill_rank: int | None,
    transfer_timeout: float,
    abort: Abort,
) -> AsyncGenerator[EngineOutput, None]:
    """vLLM's two steps; yields the decode's outputs. The same request id on both engines."""
    sampling = msgspec.structs.replace(
        request.sampling,
        max_tokens=1,
        min_tokens=0,
        n=1,
        logprobs=None,
        prompt_logprobs=None,
        constraint=None,
    )
    prefill_request = msgspec.structs.replace(
        request,
        sampling=sampling,
        stream=False,
        kv_transfer_params=REMOTE_DECODE,
        data_parallel_rank=prefill_rank,
    )
    handoff: str | None = None
    outputs = prefill.generate(prefill_request)
    try:
        async for output in outputs:
            handoff = output.kv_transfer_params or handoff
    except EngineError as exc:
        raise PrefillFailed(exc) from exc
    finally:
        await outputs.aclose()
    if handoff is None:
        raise PrefillFailed(
            EngineError(
                "it returned no kv_transfer_params (is its KV connector a kv_producer?)",
                code="failed_precondition",
            )
        )
    outputs = decode.generate(msgspec.structs.replace(request, kv_transfer_params=handoff))
    try:
        try:
            first = await asyncio.wait_for(anext(outputs, None), transfer_timeout)
        except TimeoutError:
            abort(decode, request.request_id)
            abort(prefill, request.request_id)
            raise KvTransferTimeout(transfer_timeout) from None
        if first is None:
            return
        yield first
        async for output in outputs:
            yield output
    finally:
        await outputs.aclose()
