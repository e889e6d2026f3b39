"""``POST /v1/responses``: the Responses API as a thin adapter over the chat pipeline.

A request becomes a chat request (input items -> messages, function tools, ``text.format`` ->
``response_format``, ``reasoning.effort`` -> the template's thinking switch), is prepared and
generated like any chat completion, and its parsed output (reasoning, text, function calls) is
turned into output items and stream events by ``ResponseBuilder``. What is stored, and where,
is the storage backend's business (``herdsman.storage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from herdsman.api.bodies import decode_body, routing_key
from herdsman.api.errors import APIError, api_error, bad_request
from herdsman.api.protocol import ChatCompletionRequest
from herdsman.api.responses import mcp_tools
from herdsman.api.responses.builder import ResponseBuilder
from herdsman.api.responses.items import (
    Item,
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    new_id,
    normalize_input,
    to_messages,
)
from herdsman.api.responses.protocol import ResponsesRequest
from herdsman.api.sse import encode_json
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.errors import InvalidRequest, RequestError
from herdsman.pipeline.generate import Generation, GenerationPlan
from herdsman.pipeline.images import load_images
from herdsman.pipeline.parsing import ParsedDelta
from herdsman.pipeline.prepare import prepare_chat
from herdsman.storage import ResponseRecord, StorageError, Store

log = logging.getLogger(__name__)

# What ``include`` may ask for: herdsman has no encrypted reasoning (reasoning items carry their
# text), so asking for it changes nothing.
_INCLUDES = frozenset({"reasoning.encrypted_content"})
_CANCEL_POLL_S = 0.5
_PROGRESS_EVERY_S = 0.5


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


def require_store(ctx: ServingContext, what: str) -> Store:
    store = ctx.store
    if store is None:
        raise bad_request(
            f"{what} needs storage, and this gateway runs with --storage none", "store"
        )
    return store


def storage_failed(exc: StorageError) -> APIError:
    return APIError(503, f"the response store is unavailable: {exc}", code="storage_unavailable")


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + encode_json(event) + b"\n\n"


async def create_response(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, ResponsesRequest)
    try:
        prepared = await _prepare(ctx, body, request)
    except StorageError as exc:
        raise storage_failed(exc) from exc
    generation = Generation(ctx, prepared.model, prepared.plan, request.received_at)
    if body.background:
        return await _start_background(ctx, prepared, generation)
    await generation.start()
    if body.stream:
        return StreamingResponse(_stream(ctx, prepared, generation))
    async for _ in _drive(prepared, generation):
        pass
    await _save(prepared, strict=True)
    return Response(200, encode_json(prepared.builder.response))


# --- preparation ---------------------------------------------------------------------------------


async def _prepare(ctx: ServingContext, body: ResponsesRequest, request: Request) -> Prepared:
    model = ctx.served(body.model)
    store = ctx.store
    if body.store and store is None:
        raise bad_request("store is true, but this gateway runs with --storage none", "store")
    stored = body.store if body.store is not None else store is not None
    if body.background and not stored:
        raise bad_request("background responses must be stored (store: true)", "background")
    if body.previous_response_id and body.conversation is not None:
        raise bad_request(
            "previous_response_id and conversation cannot be used together", "conversation"
        )
    for key in body.include or ():
        if key not in _INCLUDES:
            raise bad_request(f"include value {key!r} is not supported", "include")
    _check_metadata(body.metadata)
    history: list[Item] = []
    if body.previous_response_id:
        previous = await require_store(ctx, "previous_response_id").get_response(
            body.previous_response_id
        )
        if previous is None:
            raise APIError(
                404,
                f"previous response '{body.previous_response_id}' not found",
                param="previous_response_id",
                code="not_found",
            )
        history = previous.context
    conversation_id = _conversation_id(body.conversation)
    if conversation_id is not None:
        conversations = require_store(ctx, "conversation")
        if await conversations.get_conversation(conversation_id) is None:
            raise APIError(
                404,
                f"conversation '{conversation_id}' not found",
                param="conversation",
                code="not_found",
            )
        history = await all_items(conversations, conversation_id)
    input_items = normalize_input(body.input)
    if not input_items and not history:
        raise bad_request("'input' is empty", "input")
    function_tools, mcp_specs = mcp_tools.split_tools(ctx, body.tools)
    mcp = await mcp_tools.resolve(ctx, mcp_specs)
    approved = await _run_approved(ctx, mcp, history, input_items)
    chat = _chat_request(
        model,
        body,
        to_messages(history + input_items + approved, body.instructions),
        (chat_tools(function_tools) or []) + mcp.chat_tools,
    )
    plan = await _plan(ctx, model, chat, body)
    plan.routing_key = routing_key(request) or body.prompt_cache_key
    response_id = new_id("resp")
    plan.request_id = response_id
    plan.stream = True  # steps are consumed as they come, even for a non-streamed response
    builder = ResponseBuilder(
        _response_object(response_id, model, body, stored, conversation_id),
        # A background response keeps its events for replay (stored as it runs).
        keep_events=bool(body.stream or body.background),
    )
    builder.mcp_tools = {
        name: (label, mcp.needs_approval(label, name)) for name, label in mcp.by_tool.items()
    }
    max_calls = 1 if not body.parallel_tool_calls else None
    if body.max_tool_calls is not None:
        max_calls = min(max_calls or body.max_tool_calls, body.max_tool_calls)
    return Prepared(
        ctx=ctx,
        chat=chat,
        mcp=mcp,
        approved=approved,
        body=body,
        model=model,
        plan=plan,
        builder=builder,
        store=store if stored else None,
        input_items=input_items,
        history=history,
        conversation_id=conversation_id,
        max_calls=max_calls,
        received_at=request.received_at,
    )


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise bad_request("metadata has more than 16 keys", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise bad_request(
                "metadata keys are at most 64 characters and values at most 512", "metadata"
            )


def _conversation_id(value: str | dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise bad_request("'conversation' must be an id or {\"id\": ...}", "conversation")
    return value


async def all_items(store: Store, conversation_id: str) -> list[Item]:
    items: list[Item] = []
    after: str | None = None
    while True:
        page = await store.list_items(conversation_id, after=after, limit=100, order="asc")
        items += page.data
        if not page.has_more or not page.data:
            return items
        after = page.data[-1]["id"]


async def _run_approved(
    ctx: ServingContext, mcp: mcp_tools.McpTools, history: list[Item], items: list[Item]
) -> list[Item]:
    """The MCP calls this request's ``mcp_approval_response`` items approve, run now: each is
    an ``mcp_call`` item of the new response, and the model sees its result."""
    responses = [i for i in items if i["type"] == "mcp_approval_response" and i["approve"]]
    if not responses:
        return []
    requests = {i["id"]: i for i in history + items if i["type"] == "mcp_approval_request"}
    calls = []
    for answer in responses:
        request = requests.get(answer["approval_request_id"])
        if request is None:
            raise bad_request(
                f"no MCP approval request '{answer['approval_request_id']}' to approve", "input"
            )
        if request["server_label"] not in mcp.servers:
            raise bad_request(
                f"the approved call needs the MCP tool of server '{request['server_label']}' "
                "in 'tools'",
                "tools",
            )
        calls.append(
            {
                "id": new_id("mcp"),
                "type": "mcp_call",
                "status": "in_progress",
                "approval_request_id": request["id"],
                "server_label": request["server_label"],
                "name": request["name"],
                "arguments": request["arguments"],
                "output": None,
                "error": None,
            }
        )
    await asyncio.gather(*(mcp_tools.call(ctx, mcp, call) for call in calls))
    return calls


def _chat_request(
    model: ServedModel,
    body: ResponsesRequest,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> ChatCompletionRequest:
    effort = body.reasoning.effort if body.reasoning is not None else None
    return ChatCompletionRequest(
        model=model.name,
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        user=body.user,
        stream=True,
        tools=tools or None,
        tool_choice=chat_tool_choice(body.tool_choice),
        response_format=chat_response_format(body.text.format if body.text else None),
        reasoning_effort=effort,
        chat_template_kwargs=body.chat_template_kwargs,
    )


async def _plan(
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


def _response_object(
    response_id: str,
    model: ServedModel,
    body: ResponsesRequest,
    stored: bool,
    conversation_id: str | None,
) -> dict[str, Any]:
    reasoning = body.reasoning
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": body.background,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": model.name,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        "service_tier": "default",
        "store": stored,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": {"format": (body.text.format if body.text else None) or {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": body.tools or [],
        "top_logprobs": body.top_logprobs,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "truncation": body.truncation or "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


# --- generation ----------------------------------------------------------------------------------


async def _drive(prepared: Prepared, generation: Generation) -> AsyncIterator[None]:
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
    plan = await _plan(prepared.ctx, prepared.model, chat, prepared.body)
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


async def _stream(
    ctx: ServingContext, prepared: Prepared, generation: Generation
) -> AsyncIterator[bytes]:
    builder = prepared.builder
    async for _ in _drive(prepared, generation):
        for event in builder.take_events():
            yield frame(event)
    await _save(prepared, strict=False)


# --- storage -------------------------------------------------------------------------------------


def _record(prepared: Prepared) -> ResponseRecord:
    response = prepared.builder.response
    return ResponseRecord(
        id=response["id"],
        created_at=response["created_at"],
        response=response,
        input_items=prepared.input_items,
        context=prepared.history + prepared.input_items + response["output"],
    )


async def _save(prepared: Prepared, *, strict: bool) -> None:
    """Store the finished response (and extend its conversation). ``strict``: a storage failure
    is the client's error (503); otherwise (the answer already went out) it is logged."""
    store = prepared.store
    if store is None:
        return
    try:
        await store.put_response(_record(prepared))
        if prepared.conversation_id is not None and prepared.builder.response["status"] in (
            "completed",
            "incomplete",
        ):
            await store.add_items(
                prepared.conversation_id,
                prepared.input_items + prepared.builder.response["output"],
            )
    except StorageError as exc:
        if strict:
            raise storage_failed(exc) from exc
        log.warning("response %s was not stored: %s", prepared.builder.response["id"], exc)


# --- background ----------------------------------------------------------------------------------

# Background runs of this process, by response id: a cancel arriving here stops one at once; a
# cancel arriving at another process sets the store's flag, which the run polls.
RUNNING: dict[str, asyncio.Task[None]] = {}


async def _start_background(
    ctx: ServingContext, prepared: Prepared, generation: Generation
) -> Response | StreamingResponse:
    store = prepared.store
    assert store is not None
    builder = prepared.builder
    builder.response["status"] = "queued"
    try:
        await store.put_response(_record(prepared))
    except StorageError as exc:
        raise storage_failed(exc) from exc
    feed: asyncio.Queue[bytes | None] = asyncio.Queue()
    task = asyncio.get_running_loop().create_task(
        _run_background(prepared, generation, store, feed if prepared.body.stream else None),
        name=f"background {builder.response['id']}",
    )
    RUNNING[builder.response["id"]] = task
    task.add_done_callback(lambda _: RUNNING.pop(builder.response["id"], None))
    if not prepared.body.stream:
        return Response(200, encode_json(builder.response))
    return StreamingResponse(_follow(feed))


async def _follow(feed: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    """The client's view of a background run: leaving it does not stop the run."""
    while (chunk := await feed.get()) is not None:
        yield chunk


async def _run_background(
    prepared: Prepared,
    generation: Generation,
    store: Store,
    feed: asyncio.Queue[bytes | None] | None,
) -> None:
    builder = prepared.builder
    response_id = builder.response["id"]
    watcher = asyncio.get_running_loop().create_task(_watch_cancel(store, response_id))
    pending: list[tuple[int, bytes]] = []
    saved_at = time.monotonic()
    try:
        await generation.start()
        builder.response["status"] = "in_progress"
        async for _ in _drive(prepared, generation):
            for event in builder.take_events():
                data = frame(event)
                pending.append((event["sequence_number"], data))
                if feed is not None:
                    feed.put_nowait(data)
            if time.monotonic() - saved_at >= _PROGRESS_EVERY_S:
                saved_at = time.monotonic()
                await _flush(store, prepared, pending)
    except asyncio.CancelledError:
        builder.cancel()
    except RequestError as exc:
        builder.fail(str(api_error(exc).code or "server_error"), exc.message)
        for event in builder.take_events():
            pending.append((event["sequence_number"], frame(event)))
            if feed is not None:
                feed.put_nowait(pending[-1][1])
    except Exception:
        log.exception("background response %s failed", response_id)
        builder.fail("server_error", "the gateway failed while generating this response")
    finally:
        watcher.cancel()
        if feed is not None:
            feed.put_nowait(None)
        with contextlib.suppress(StorageError):
            await _flush(store, prepared, pending)
        await _save(prepared, strict=False)


async def _flush(store: Store, prepared: Prepared, pending: list[tuple[int, bytes]]) -> None:
    if pending:
        await store.append_events(prepared.builder.response["id"], pending[:])
        pending.clear()
    await store.put_response(_record(prepared))


async def _watch_cancel(store: Store, response_id: str) -> None:
    """Returns once a cancel for this response was asked for, from any gateway process."""
    while True:
        await asyncio.sleep(_CANCEL_POLL_S)
        with contextlib.suppress(StorageError):
            if await store.cancel_requested(response_id):
                task = RUNNING.get(response_id)
                if task is not None:
                    task.cancel()
                return
