"""The Embed RPC of a --pooling sim: one forward pass over the input, then its pooled values.

What a gateway sees:
- an embedding (--pooling embed) or a classifier's raw logits (--pooling classify), computed by
  herdsman.sim.pooling, after the timing model's prefill time for the input (--ttft-base-ms plus
  --prefill-ms-per-1k; queued behind other prefills with --serial-prefill);
- a generation model (no --pooling): INVALID_ARGUMENT "this model does not support embeddings";
- no `tokenized`, no ids, an id outside the vocabulary, an input longer than the model takes,
  malformed token_type_ids, a DP rank out of range: INVALID_ARGUMENT;
- --reject-new: UNAVAILABLE; --busy / --busy-fraction: RESOURCE_EXHAUSTED (the same draws as
  Generate's); --hang: no answer until the client cancels, its deadline passes, or an Abort;
- an Abort RPC naming the call while it is computed: ABORTED; a client cancel is logged as
  `cancel <id>` like a Generate's.
The token-count faults (--fail-after-tokens, --exit-after-tokens, --hang-after-tokens) do not
apply: an Embed produces no tokens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from herdsman.sim.dp_engine import DataParallelEngine
from herdsman.sim.generate_handler import log_trace
from herdsman.sim.pooling import OFFLOAD_CELLS, check_input
from herdsman.sim.wire import ProtoWire

NO_EMBEDDINGS = "this model does not support embeddings"


async def run_embed(
    engine: DataParallelEngine, wire: ProtoWire, message: Any, context: grpc.aio.ServicerContext
) -> Any:
    log_trace(engine, message, context)
    options = engine.options
    if options.reject_new:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "engine-sim rejects new requests (--reject-new)"
        )
    pooling = engine.pooling
    if pooling is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_EMBEDDINGS)
        return None
    if engine.refuses_busy():
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "engine-sim is busy (--busy / --busy-fraction)"
        )
    try:
        params = wire.parse_embed(message)
        check_input(
            params.input_ids,
            params.token_type_ids,
            vocab_size=engine.card.vocab_size,
            max_len=wire.max_embed_len,
        )
        call = engine.submit_embed(params)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return None
    cancelled = False
    try:
        loop = asyncio.get_running_loop()
        # The forward pass: wait it out on the loop's clock, or for an Abort (--hang: only that).
        delay = None if options.hang else max(call.ready_at - loop.time(), 0.0)
        try:
            async with asyncio.timeout(delay):
                await call.aborted.wait()
        except TimeoutError:
            pass
        else:
            await context.abort(grpc.StatusCode.ABORTED, f"request {params.request_id} was aborted")
        ids, types = params.input_ids, params.token_type_ids
        if len(ids) * pooling.dim > OFFLOAD_CELLS:
            # Tens of milliseconds of numpy for a long input: not on the event loop.
            values = await asyncio.to_thread(pooling.pool, ids, types)
        else:
            values = pooling.pool(ids, types)
        return wire.embed_response(values, len(ids))
    except grpc.aio.AbortError:
        raise
    except BaseException as exc:
        # CancelledError when the client cancels or its deadline passes.
        cancelled = isinstance(exc, asyncio.CancelledError) or context.cancelled()
        raise
    finally:
        engine.release_embed(call, cancelled=cancelled)
