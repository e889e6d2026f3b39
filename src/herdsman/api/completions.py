"""POST /v1/completions."""

from __future__ import annotations

import time

from herdsman.api.bodies import (
    StreamedIds,
    decode_body,
    json_response,
    routing_key,
    run_to_end,
    text_stream,
    usage_of,
)
from herdsman.api.logprobs import CompletionLogprobs
from herdsman.api.sse import ChunkFrames
from herdsman.engines import PromptLogprobs, TokenLogprobs
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.batch import GenerationGroup
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.generate import Generation
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.pipeline.prepare import prepare_completion
from herdsman.protocol.openai import CompletionRequest


async def completions(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, CompletionRequest)
    model = ctx.served(body.model)
    model.require("generate", "/v1/completions")
    request_id, plans = await prepare_completion(model, body, ctx.limits.max_choices)
    key = routing_key(request)
    for plan in plans:
        plan.routing_key = key
    group = GenerationGroup(
        [Generation(ctx, model, plan, request.received_at, push=len(plans) == 1) for plan in plans]
    )
    await group.start()
    created = int(time.time())
    top_n = body.logprobs
    formatters = {
        c.index: CompletionLogprobs(model.tokenizer, top_n)
        for c in group.choices
        if top_n is not None
    }
    echoes = {c.index: g.plan.echo for g in group.generations for c in g.choices}
    prompts = {c.index: g.plan.input_ids for g in group.generations for c in g.choices}
    if plans[0].stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = ChunkFrames(request_id, created, model.name, chat=False)

        def logprobs(choice: ChoiceOutput, run: TokenLogprobs) -> object:
            return formatters[choice.index].format([run])

        def echo_logprobs(choice: ChoiceOutput) -> object:
            if choice.prompt_logprobs is None:
                return None
            return formatters[choice.index].format([choice.prompt_logprobs])

        return text_stream(
            frames,
            group,
            include_usage=include_usage,
            announce_role=False,
            logprobs=logprobs if formatters else None,
            echo=echoes if body.echo else None,
            echo_logprobs=echo_logprobs if body.echo and formatters else None,
            ids=StreamedIds(prompts) if body.return_token_ids else None,
        )
    await run_to_end(group)
    choices = [
        {
            "index": c.index,
            "text": echoes[c.index] + "".join(c.text or ()),
            "logprobs": _choice_logprobs(formatters[c.index], c) if formatters else None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.matched_stop,
            **(
                {"prompt_token_ids": prompts[c.index], "token_ids": c.token_ids}
                if c.token_ids is not None
                else {}
            ),
        }
        for c in group.choices
    ]
    return json_response(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "choices": choices,
            "usage": usage_of(group),
        }
    )


def _choice_logprobs(formatter: CompletionLogprobs, choice: ChoiceOutput) -> dict[str, object]:
    runs: list[TokenLogprobs | PromptLogprobs] = list(choice.logprobs or ())
    if choice.prompt_logprobs is not None:
        runs.insert(0, choice.prompt_logprobs)
    return formatter.format(runs)
