"""The Conversations API: a conversation is a stored list of items that responses read as their
history and append their input and output to."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from herdsman.api.bodies import decode_body, json_response
from herdsman.api.errors import APIError, bad_request
from herdsman.api.responses.items import new_id, normalize_input
from herdsman.api.responses.persist import require_store, storage_failed
from herdsman.api.responses.stored import int_param, list_object, order_param, path_segment, query
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServingContext
from herdsman.storage import StorageError, Store

# At most this many items in one create call (OpenAI's limit).
_MAX_ITEMS = 20


class ConversationCreate(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


class ConversationUpdate(msgspec.Struct, kw_only=True):
    metadata: dict[str, str]


class ItemsCreate(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]]


def _metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise bad_request(
            "metadata has at most 16 keys of 64 characters, values of 512", "metadata"
        )
    return metadata


def _items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(items) > _MAX_ITEMS:
        raise bad_request(f"at most {_MAX_ITEMS} items can be added at once", "items")
    return normalize_input(items, "items")


async def _conversation(store: Store, conversation_id: str) -> dict[str, Any]:
    found = await store.get_conversation(conversation_id)
    if found is None:
        raise APIError(404, f"conversation '{conversation_id}' not found", code="not_found")
    return found


async def _guarded(coro: Any) -> Any:
    try:
        return await coro
    except StorageError as exc:
        raise storage_failed(exc) from exc


async def create_conversation(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    body = decode_body(request.body or b"{}", ConversationCreate)
    conversation = {
        "id": new_id("conv"),
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": _metadata(body.metadata),
    }
    items = _items(body.items or [])

    async def create() -> None:
        await store.put_conversation(conversation)
        if items:
            await store.add_items(conversation["id"], items)

    await _guarded(create())
    return json_response(conversation)


async def get_conversation(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    return json_response(await _guarded(_conversation(store, path_segment(request, 3))))


async def update_conversation(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    body = decode_body(request.body, ConversationUpdate)

    async def update() -> dict[str, Any]:
        conversation = await _conversation(store, path_segment(request, 3))
        conversation["metadata"] = _metadata(body.metadata)
        await store.put_conversation(conversation)
        return conversation

    return json_response(await _guarded(update()))


async def delete_conversation(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    conversation_id = path_segment(request, 3)
    if not await _guarded(store.delete_conversation(conversation_id)):
        raise APIError(404, f"conversation '{conversation_id}' not found", code="not_found")
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def list_items(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    conversation_id = path_segment(request, 3)
    params = query(request)
    order = order_param(params)
    limit = int_param(params, "limit", 20, 1, 100)

    async def page() -> dict[str, Any]:
        await _conversation(store, conversation_id)
        found = await store.list_items(
            conversation_id, after=params.get("after") or None, limit=limit, order=order
        )
        return list_object(found.data, found.has_more)

    return json_response(await _guarded(page()))


async def add_items(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    conversation_id = path_segment(request, 3)
    items = _items(decode_body(request.body, ItemsCreate).items)

    async def add() -> None:
        await _conversation(store, conversation_id)
        await store.add_items(conversation_id, items)

    await _guarded(add())
    return json_response(list_object(items, False))


async def get_item(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    conversation_id, item_id = path_segment(request, 3), path_segment(request, 5)

    async def get() -> dict[str, Any]:
        await _conversation(store, conversation_id)
        return await store.get_item(conversation_id, item_id)

    item = await _guarded(get())
    if item is None:
        raise APIError(404, f"item '{item_id}' not found", code="not_found")
    return json_response(item)


async def delete_item(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "a conversation")
    conversation_id, item_id = path_segment(request, 3), path_segment(request, 5)

    async def delete() -> dict[str, Any]:
        conversation = await _conversation(store, conversation_id)
        if not await store.delete_item(conversation_id, item_id):
            raise APIError(404, f"item '{item_id}' not found", code="not_found")
        return conversation

    return json_response(await _guarded(delete()))
