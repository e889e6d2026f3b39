"""``POST /v1/responses``: the Responses API as a thin adapter over the chat pipeline.

A request becomes a chat request (input items -> messages, function tools, ``text.format`` ->
``response_format``, ``reasoning.effort`` -> the template's thinking switch), is prepared and
generated like any chat completion, and its parsed output (reasoning, text, function calls) is
turned into output items and stream events by ``ResponseBuilder``. What is stored, and where,
is the storage backend's business (``herdsman.storage``). The generation turns are in ``run``,
what is stored in ``persist``, background runs in ``background``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from herdsman.api.bodies import decode_body, routing_key
from herdsman.api.errors import APIError, bad_request
from herdsman.api.responses import mcp_tools
from herdsman.api.responses.background import start_background
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
from herdsman.api.responses.persist import all_items, require_store, save, storage_failed
from herdsman.api.responses.protocol import ResponsesRequest
from herdsman.api.responses.run import Prepared, drive, frame, plan_chat
from herdsman.api.sse import encode_json
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.generate import Generation
from herdsman.protocol.openai import ChatCompletionRequest
from herdsman.storage import StorageError

# What ``include`` may ask for: herdsman has no encrypted reasoning (reasoning items carry their
# text), so asking for it changes nothing.
_INCLUDES = frozenset({"reasoning.encrypted_content"})


async def create_response(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, ResponsesRequest)
    try:
        prepared = await _prepare(ctx, body, request)
    except StorageError as exc:
        raise storage_failed(exc) from exc
    generation = Generation(ctx, prepared.model, prepared.plan, request.received_at)
    if body.background:
        return await start_background(ctx, prepared, generation)
    await generation.start()
    if body.stream:
        return StreamingResponse(_stream(ctx, prepared, generation))
    async for _ in drive(prepared, generation):
        pass
    await save(prepared, strict=True)
    return Response(200, encode_json(prepared.builder.response))


# --- preparation ---------------------------------------------------------------------------------


async def _prepare(ctx: ServingContext, body: ResponsesRequest, request: Request) -> Prepared:
    model = ctx.served(body.model)
    model.require("generate", "/v1/responses")
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
    plan = await plan_chat(ctx, model, chat, body)
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


# --- streaming -----------------------------------------------------------------------------------


async def _stream(
    ctx: ServingContext, prepared: Prepared, generation: Generation
) -> AsyncIterator[bytes]:
    builder = prepared.builder
    async for _ in drive(prepared, generation):
        for event in builder.take_events():
            yield frame(event)
    await save(prepared, strict=False)
