"""The Generate RPC: submits to the engine and ships what the step loop produces.

Ending behaviour, as a gateway sees it:
- normal end: one GenerateComplete per output index, status OK;
- Abort RPC: the tokens produced so far, then GenerateComplete(finish_reason="abort") for each
  unfinished index, status OK;
- --fail-after-tokens N: exactly N tokens streamed, then status INTERNAL;
- --exit-after-tokens N: N tokens streamed, then the process dies (the client sees UNAVAILABLE);
- --reject-new: status UNAVAILABLE before anything is accepted;
- --busy / --busy-fraction: status RESOURCE_EXHAUSTED before anything is accepted;
- --hang-after-tokens N: N tokens streamed, then nothing until the client cancels or aborts;
- an invalid request (empty or over-long prompt): status INVALID_ARGUMENT;
- a pooling model (--pooling): status INVALID_ARGUMENT, it cannot generate.

PD disaggregation (sim/disagg.py):
- a prefill (--role prefill, with a room) is a regular request cut to one token whose room is
  held for a decode once it finished, and dropped if it ended any other way;
- a decode (--role decode) waits for its KV before it is scheduled: ABORTED when it does not come
  within --kv-transfer-timeout-ms or the prefill dropped it, FAILED_PRECONDITION when the prefill
  holds no such KV (or KV for another prompt); an Abort RPC meanwhile ends it as any abort does;
- a PD request the role cannot serve (a decode without a room): INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import grpc

from herdsman.sim.disagg import KvTransferError
from herdsman.sim.dp_engine import DataParallelEngine
from herdsman.sim.sim_request import DecodeHandoff, PrefillHandoff, RequestState, SimRequest
from herdsman.sim.wire import ProtoWire

logger = logging.getLogger(__name__)

INJECTED_EXIT_CODE = 3
NO_GENERATION = "this model does not support generation"
# Time for the last chunk to leave the socket before the injected exit tears the process down.
_EXIT_GRACE_S = 0.05


def log_trace(engine: DataParallelEngine, message: Any, context: grpc.aio.ServicerContext) -> None:
    """--trace-log: the call's request id and the traceparent in its metadata."""
    path = engine.options.trace_log
    if path is None:
        return
    metadata = dict(context.invocation_metadata() or ())
    traceparent = metadata.get("traceparent") or "-"
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{getattr(message, 'request_id', '')} {traceparent}\n")


def log_timing(engine: DataParallelEngine, request: SimRequest, arrived_ns: int) -> None:
    """--timing-log: when the call arrived and first wrote, and its prompt."""
    path = engine.options.timing_log
    if path is None:
        return
    first = str(request.first_write_ns) if request.first_write_ns else "-"
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{arrived_ns} {first} {request.prompt_len} {request.cached_tokens}\n")


async def run_generate(
    engine: DataParallelEngine, wire: ProtoWire, message: Any, context: grpc.aio.ServicerContext
) -> None:
    arrived_ns = time.time_ns()
    log_trace(engine, message, context)
    if engine.options.reject_new:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "engine-sim rejects new requests (--reject-new)"
        )
        return
    if engine.pooling is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_GENERATION)
        return
    if engine.refuses_busy():
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "engine-sim is busy (--busy / --busy-fraction)",
        )
        return
    try:
        request = engine.submit(wire.parse_generate(message))
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return
    handoff = request.params.handoff
    if isinstance(handoff, PrefillHandoff):
        engine.handoffs.open_room(engine.rank_of(request), request, handoff)
    cancelled = False
    try:
        # Headers go out before the first token, as vLLM's servicer does, so a client awaiting
        # the call object does not wait out the TTFT (or a decode's KV).
        await context.send_initial_metadata(())
        if isinstance(handoff, DecodeHandoff) and request.state is RequestState.AWAITING_KV:
            try:
                await engine.handoffs.receive(engine.rank_of(request), request, handoff)
            except KvTransferError as exc:
                await context.abort(exc.code, str(exc))
        await _ship(engine, wire, request, context)
    except grpc.aio.AbortError:
        raise
    except BaseException as exc:
        # CancelledError when the client cancels; a failed write when it vanished mid-send.
        cancelled = isinstance(exc, asyncio.CancelledError) or context.cancelled()
        raise
    finally:
        engine.release(request, cancelled=cancelled)
        log_timing(engine, request, arrived_ns)
        if isinstance(handoff, PrefillHandoff):
            # Finished: its KV waits for a decode. Ended any other way: dropped.
            engine.handoffs.close_room(request)


async def _ship(
    engine: DataParallelEngine,
    wire: ProtoWire,
    request: SimRequest,
    context: grpc.aio.ServicerContext,
) -> None:
    per_message = engine.options.tokens_per_message
    stream = request.params.stream
    sequences = request.sequences
    wake = request.wake
    while True:
        await wake.wait()
        wake.clear()
        # Snapshot before the first write: the step loop keeps running during every await, and
        # a sequence that finishes mid-write must not get its complete ahead of its last tokens.
        state = request.state
        exit_now = request.exit_now
        ready = [(seq, seq.finish_reason is not None, len(seq.output)) for seq in sequences]
        for seq, finished, end in ready:
            if stream:
                start = seq.flushed
                if end > start and (
                    end - start >= per_message or start == 0 or finished or seq.hung
                ):
                    seq.flushed = end
                    if not request.first_write_ns:
                        request.first_write_ns = time.time_ns()
                    await context.write(wire.chunk(request, seq, start, end))
            if finished and not seq.complete_sent and state is not RequestState.FAILED:
                seq.complete_sent = True
                if not request.first_write_ns:
                    request.first_write_ns = time.time_ns()
                await context.write(wire.complete(request, seq))
        if exit_now:
            await _exit_abruptly(request)
        if state is RequestState.FAILED:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"engine-sim injected failure after {request.generated_tokens} tokens "
                "(--fail-after-tokens)",
            )
        if all(seq.complete_sent for seq in sequences):
            return


async def _exit_abruptly(request: SimRequest) -> None:
    logger.warning(
        "exiting after %d tokens of %s (--exit-after-tokens)",
        request.generated_tokens,
        request.params.request_id,
    )
    await asyncio.sleep(_EXIT_GRACE_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INJECTED_EXIT_CODE)
