"""One response's generation: the prepared request, and the turns that fill its builder (one,
or several when the gateway runs MCP calls between them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from herdsman.api.errors import api_error
from herdsman.api.responses import mcp_tools
from herdsman.api.responses.builder import ResponseBuilder
from herdsman.api.responses.items import (
    Item,
    to_messages,
)
from herdsman.api.responses.protocol import ResponsesRequest
from herdsman.api.sse import encode_json
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.errors import InvalidRequest, RequestError
from herdsman.pipeline.generate import Generation, GenerationPlan
from herdsman.pipeline.images import load_images
from herdsman.pipeline.parsing import ParsedDelta
from herdsman.pipeline.prepare import prepare_chat
from herdsman.protocol.openai import ChatCompletionRequest
from herdsman.storage import Store


@dataclass(slots=True)
class Prepared:
    body: ResponsesRequest
    model: ServedModel
    plan: GenerationPlan
    builder: ResponseBuilder
    store: Store | None
    # This request's input items, and what came before them (a chain or a conversation).
    input_items: list[Item]
    history: list[Item]
    conversation_id: str | None
    max_calls: int | None
    received_at: float
    ctx: ServingContext
    chat: ChatCompletionRequest
    mcp: mcp_tools.McpTools
    # MCP calls made before the first turn (approved by the client in this request's input).
    approved: list[Item] = field(default_factory=list)


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + encode_json(event) + b"\n\n"


async def plan_chat(
    ctx: ServingContext, model: ServedModel, chat: ChatCompletionRequest, body: ResponsesRequest
) -> GenerationPlan:
    images = await load_images(
        model.images,
        chat.messages,
        max_images=ctx.limits.max_images,
        fetch_timeout=ctx.limits.image_fetch_timeout,
    )
    while True:
        try:
            return await prepare_chat(model, chat, images, 1)
        except InvalidRequest as exc:
            # truncation "auto": the oldest turns go (the instructions stay) until it fits.
            if body.truncation != "auto" or not _too_long(exc) or not _drop_oldest(chat):
                if exc.param == "messages":
                    exc.param = "input"  # the chat request's field is this request's input
                raise


def _too_long(exc: InvalidRequest) -> bool:
    return "maximum context length" in exc.message


def _drop_oldest(chat: ChatCompletionRequest) -> bool:
    messages = chat.messages
    first = 1 if messages and messages[0]["role"] == "system" else 0
    if len(messages) - first <= 1:
        return False
    del messages[first]
    # A tool result whose call went with the dropped turn would not render.
    while len(messages) - first > 1 and messages[first]["role"] == "tool":
        del messages[first]
    return True


async def drive(prepared: Prepared, generation: Generation) -> AsyncIterator[None]:
    """Run the generation into the builder; yields after each step's events were added.

    With MCP tools, a turn whose only calls are MCP calls the gateway may run is followed by
    another: the calls run (concurrently), their results join the conversation, and the model
    goes on, up to ``max_tool_calls`` calls in all."""
    builder = prepared.builder
    builder.start()
    for item in prepared.mcp.listings + prepared.approved:
        builder.add_done_item(item)
    yield
    usage = _Usage()
    limit = prepared.body.max_tool_calls or mcp_tools.DEFAULT_MAX_TOOL_CALLS
    made = len(prepared.approved)
    try:
        while True:
            async for _ in _turn(prepared, generation, usage):
                yield
            finish = usage.finish
            calls = builder.turn_calls
            to_run = [c for c in calls if c["type"] == "mcp_call"]
            budget = prepared.body.max_output_tokens
            if finish == "length" or (to_run and budget is not None and usage.output >= budget):
                # max_output_tokens bounds the whole response: no turn after it is spent, and
                # a call cut off (or made) in the last turn is not run.
                finish = "length"
                _not_run(builder, to_run, "the response reached max_output_tokens")
                break
            if not to_run:
                break
            if made + len(to_run) > limit:
                finish = "max_tool_calls"
                _not_run(builder, to_run, f"this response reached max_tool_calls ({limit})")
                break
            made += len(to_run)
            ctx, mcp = prepared.ctx, prepared.mcp
            await asyncio.gather(*(mcp_tools.call(ctx, mcp, c) for c in to_run))
            for call in to_run:
                builder.mcp_finished(call)
            yield
            if len(to_run) != len(calls):
                break  # the client's own calls (or an approval) end the loop: it acts next
            builder.next_turn()
            generation = await _next_generation(prepared, builder.output, usage.output)
    except RequestError as exc:
        error = api_error(exc)
        builder.fail(str(error.code or "server_error"), exc.message)
        yield
        return
    builder.finish(finish, usage.as_dict())
    yield


def _not_run(builder: ResponseBuilder, calls: list[Item], why: str) -> None:
    for call in calls:
        call["error"] = f"not run: {why}"
        call["status"] = "failed"
        builder.mcp_finished(call)


class _Usage:
    """Tokens summed over every turn of a response."""

    def __init__(self) -> None:
        self.input = self.cached = self.output = self.reasoning = 0
        self.finish: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": min(self.reasoning, self.output)},
            "total_tokens": self.input + self.output,
        }


async def _turn(prepared: Prepared, generation: Generation, usage: _Usage) -> AsyncIterator[None]:
    """One generation into the builder."""
    plan, builder = generation.plan, prepared.builder
    parser = plan.parsers.for_choice() if plan.parsers is not None else None
    usage.finish = None
    counted = 0
    calls_seen: set[int] = set()
    async for choice, text, _logprobs, finish_reason in generation.run():
        delta = parser.feed(text) if parser is not None else ParsedDelta(content=text)
        if finish_reason is not None:
            usage.finish = finish_reason
            if parser is not None:
                tail = parser.finish()
                delta.reasoning += tail.reasoning
                delta.content += tail.content
                delta.tool_calls += tail.tool_calls
        tokens, counted = choice.token_count - counted, choice.token_count
        if delta.reasoning and not delta.content and not delta.tool_calls:
            usage.reasoning += tokens
        if delta.tool_calls and prepared.max_calls is not None:
            delta.tool_calls = _limit_calls(delta.tool_calls, calls_seen, prepared.max_calls)
        builder.feed(delta)
        yield
    builder.close_items()
    usage.input += generation.prompt_tokens
    usage.cached += generation.cached_tokens
    usage.output += generation.completion_tokens


async def _next_generation(prepared: Prepared, output: list[Item], spent: int) -> Generation:
    """The next turn: the same request with this response's output so far appended, and what
    is left of max_output_tokens."""
    chat = prepared.chat
    if prepared.body.max_output_tokens is not None:
        chat.max_tokens = prepared.body.max_output_tokens - spent
    items = prepared.history + prepared.input_items + output
    chat.messages = to_messages(items, prepared.body.instructions)
    # A forced tool choice forces the first turn's call; after the results, the model decides
    # (forcing every turn would loop until max_tool_calls).
    if chat.tool_choice not in (None, "none", "auto"):
        chat.tool_choice = "auto"
    plan = await plan_chat(prepared.ctx, prepared.model, chat, prepared.body)
    plan.request_id = f"{prepared.builder.response['id']}-{len(output)}"
    plan.stream = True
    generation = Generation(prepared.ctx, prepared.model, plan, time.perf_counter())
    await generation.start()
    return generation


def _limit_calls(calls: list[dict[str, Any]], seen: set[int], limit: int) -> list[dict[str, Any]]:
    kept = []
    for call in calls:
        index = call.get("index", 0)
        if index not in seen and len(seen) >= limit:
            continue
        seen.add(index)
        kept.append(call)
    return kept
