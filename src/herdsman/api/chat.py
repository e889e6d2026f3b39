"""POST /v1/chat/completions."""

from __future__ import annotations

import time

from herdsman.api.logprobs import chat_logprobs
from herdsman.api.protocol import ChatCompletionRequest
from herdsman.api.responses import (
    decode_body,
    json_response,
    run_to_end,
    stream_events,
    usage_of,
)
from herdsman.api.sse import ChunkFrames
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.generate import Generation, GenerationPlan
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.pipeline.prepare import prepare_chat


async def chat_completions(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, ChatCompletionRequest)
    plan = prepare_chat(ctx.model, body)
    generation = Generation(ctx, plan, request.received_at)
    await generation.start()
    created = int(time.time())
    if plan.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = ChunkFrames(plan.request_id, created, ctx.model.name, chat=True)
        top_n = plan.sampling.logprobs
        tokenizer = ctx.model.tokenizer
        logprobs = (
            None
            if top_n is None
            else lambda _choice, run: {"content": chat_logprobs(tokenizer, [run], top_n)}
        )
        events = stream_events(
            frames, generation, include_usage=include_usage, announce_role=True, logprobs=logprobs
        )
        return StreamingResponse(events)
    return await _complete(ctx, plan, generation, created)


def _choice_logprobs(
    ctx: ServingContext, plan: GenerationPlan, choice: ChoiceOutput
) -> dict[str, object] | None:
    top_n = plan.sampling.logprobs
    if top_n is None:
        return None
    return {"content": chat_logprobs(ctx.model.tokenizer, choice.logprobs or (), top_n)}


async def _complete(
    ctx: ServingContext, plan: GenerationPlan, generation: Generation, created: int
) -> Response:
    await run_to_end(generation)
    choices = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": "".join(c.text or ())},
            "logprobs": _choice_logprobs(ctx, plan, c),
            "finish_reason": c.finish_reason,
            "stop_reason": c.matched_stop,
        }
        for c in generation.choices
    ]
    return json_response(
        {
            "id": plan.request_id,
            "object": "chat.completion",
            "created": created,
            "model": ctx.model.name,
            "choices": choices,
            "usage": usage_of(generation),
        }
    )
