"""POST /v1/chat/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from herdsman.api.bodies import (
    LogprobsFormat,
    StreamedIds,
    decode_body,
    json_response,
    routing_key,
    run_to_end,
    sse_body,
    streamed,
    text_stream,
    usage_of,
)
from herdsman.api.logprobs import ChatLogprobs, chat_logprobs
from herdsman.api.sse import ChunkFrames, encode_json
from herdsman.engines import TokenLogprobs
from herdsman.http import Request, Response, StreamingResponse
from herdsman.observability import tracing
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.generate import Generation, GenerationPlan
from herdsman.pipeline.images import load_images
from herdsman.pipeline.parsing import ParserSetup
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.pipeline.prepare import prepare_chat
from herdsman.protocol.openai import ChatCompletionRequest


async def chat_completions(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, ChatCompletionRequest)
    model = ctx.served(body.model)
    model.require("generate", "/v1/chat/completions")
    images = await load_images(
        model.images,
        body.messages,
        max_images=ctx.limits.max_images,
        fetch_timeout=ctx.limits.image_fetch_timeout,
    )
    plan = await prepare_chat(model, body, images, ctx.limits.max_choices)
    echo = _echoed(body)
    plan.routing_key = routing_key(request)
    # A pushed step is parsed outside the request's context, where the parse span could not be
    # recorded: with tracing on, parsed output comes through the iterator.
    push = plan.parsers is None or not tracing.enabled()
    generation = Generation(ctx, model, plan, request.received_at, push=push)
    await generation.start()
    created = int(time.time())
    if plan.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = ChunkFrames(plan.request_id, created, model.name, chat=True)
        top_n = plan.sampling.logprobs
        logprobs: LogprobsFormat | None = None
        if top_n is not None:
            formatters = {c.index: ChatLogprobs(model.tokenizer, top_n) for c in generation.choices}

            def logprobs(choice: ChoiceOutput, run: TokenLogprobs) -> object:
                return {"content": formatters[choice.index].content([run])}

        ids = None
        if plan.return_token_ids:
            ids = StreamedIds({c.index: plan.input_ids for c in generation.choices})
        if plan.parsers is not None:
            parsed = _ParsedFrames(frames, generation, plan.parsers, logprobs, ids)
            body = sse_body(frames, generation, parsed.events(echo), include_usage=include_usage)
            return streamed(body, generation, parsed.frame)
        return text_stream(
            frames,
            generation,
            include_usage=include_usage,
            announce_role=True,
            logprobs=logprobs,
            echo={c.index: echo for c in generation.choices} if echo else None,
            ids=ids,
        )
    return await _complete(model, plan, generation, created, echo)


def _echoed(body: ChatCompletionRequest) -> str:
    """With ``echo``, the text the answer starts with: the last message's, when its role is the
    answer's (the assistant's, or the last message's own without a generation prompt)."""
    if not body.echo or not body.messages:
        return ""
    last = body.messages[-1]
    if not body.add_generation_prompt or last.get("role") == "assistant":
        content = last.get("content")
        if isinstance(content, list):
            return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""
    return ""


def _choice(
    model: ServedModel, plan: GenerationPlan, choice: ChoiceOutput, echo: str = ""
) -> dict[str, object]:
    """One choice of a non-streamed response, its text parsed when the request asks for it."""
    text = "".join(choice.text or ())
    finish_reason = choice.finish_reason
    if plan.parsers is None:
        message: dict[str, object] = {"role": "assistant", "content": text}
    else:
        started = time.perf_counter()
        parser = plan.parsers.for_choice()
        parser.feed(text)
        parser.finish()
        message = parser.message()
        if tracing.enabled():
            tracing.stage("parse", started, time.perf_counter(), {"herdsman.choice": choice.index})
        if parser.calls and finish_reason == "stop":
            finish_reason = "tool_calls"
    if echo:
        message["content"] = echo + str(message.get("content") or "")
    return {
        "index": choice.index,
        "message": message,
        "logprobs": _choice_logprobs(model, plan, choice),
        "finish_reason": finish_reason,
        "stop_reason": choice.matched_stop,
        **({"token_ids": choice.token_ids} if choice.token_ids is not None else {}),
    }


def _choice_logprobs(
    model: ServedModel, plan: GenerationPlan, choice: ChoiceOutput
) -> dict[str, object] | None:
    top_n = plan.sampling.logprobs
    if top_n is None:
        return None
    return {"content": chat_logprobs(model.tokenizer, choice.logprobs or (), top_n)}


class _ParsedFrames:
    """Each choice's text split into reasoning, content and tool calls as it streams."""

    def __init__(
        self,
        frames: ChunkFrames,
        generation: Generation,
        setup: ParserSetup,
        logprobs: LogprobsFormat | None,
        ids: StreamedIds | None,
    ) -> None:
        self._frames = frames
        self._generation = generation
        self._parsers = {c.index: setup.for_choice() for c in generation.choices}
        self._logprobs = logprobs
        self._ids = ids
        # Tracing on: the parsers' time, summed over the stream (a "parse" span spanning the
        # first to the last parse, with the busy time as an attribute).
        self._timed = tracing.enabled()
        self._first_parse = self._busy = 0.0

    async def events(self, echo: str) -> AsyncIterator[bytes]:
        frames, ids, generation = self._frames, self._ids, self._generation
        for n, choice in enumerate(generation.choices):
            yield frames.role(choice.index, ids.top(choice.index) if ids and n == 0 else b"")
            if echo:
                yield frames.text(choice.index, echo)
        frame = self.frame
        async for choice, text, token_logprobs, finish_reason in generation.run():
            event = frame(choice, text, token_logprobs, finish_reason)
            if event is not None:
                yield event

    def frame(
        self,
        choice: ChoiceOutput,
        text: str,
        token_logprobs: TokenLogprobs | None,
        finish_reason: str | None,
    ) -> bytes | None:
        """One step parsed and framed (None: it adds nothing to the stream yet)."""
        frames, ids, logprobs = self._frames, self._ids, self._logprobs
        if self._timed:
            parse_started = time.perf_counter()
            self._first_parse = self._first_parse or parse_started
        parser = self._parsers[choice.index]
        delta = parser.feed(text)
        if finish_reason is not None:
            tail = parser.finish()
            delta.reasoning += tail.reasoning
            delta.content += tail.content
            delta.tool_calls += tail.tool_calls
            if parser.calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        if self._timed:
            parsed = time.perf_counter()
            self._busy += parsed - parse_started
            if finish_reason is not None:
                attributes = {"herdsman.parse.busy_s": self._busy}
                tracing.stage("parse", self._first_parse, parsed, attributes)
        lp = b"null"
        if logprobs is not None and token_logprobs is not None:
            lp = encode_json(logprobs(choice, token_logprobs))
        if not (delta or finish_reason or token_logprobs or ids):
            return None
        extra = ids.chunk(choice) if ids is not None else b""
        if not delta.reasoning and not delta.tool_calls and finish_reason is None:
            return frames.text(choice.index, delta.content, lp, extra)
        body: dict[str, object] = {}
        if delta.reasoning:
            body["reasoning_content"] = delta.reasoning
        if delta.content:
            body["content"] = delta.content
        if delta.tool_calls:
            body["tool_calls"] = delta.tool_calls
        finish = (finish_reason, choice.matched_stop) if finish_reason else None
        return frames.delta(choice.index, body, lp, finish, extra)


async def _complete(
    model: ServedModel, plan: GenerationPlan, generation: Generation, created: int, echo: str
) -> Response:
    await run_to_end(generation)
    choices = [_choice(model, plan, c, echo) for c in generation.choices]
    return json_response(
        {
            "id": plan.request_id,
            "object": "chat.completion",
            "created": created,
            "model": model.name,
            "choices": choices,
            "usage": usage_of(generation),
            **({"prompt_token_ids": plan.input_ids} if plan.return_token_ids else {}),
        }
    )
