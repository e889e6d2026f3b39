"""The stored side of the Responses API: retrieve (and replay a background stream), delete,
cancel, and list a response's input items."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from herdsman.api.bodies import json_response
from herdsman.api.errors import APIError, bad_request
from herdsman.api.responses.background import RUNNING
from herdsman.api.responses.persist import require_store, storage_failed
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.context import ServingContext
from herdsman.storage import ResponseRecord, StorageError, Store

_TERMINAL = frozenset({"completed", "failed", "incomplete", "cancelled"})
_REPLAY_POLL_S = 0.2
# How long a cancel waits for the run (perhaps in another process) to stop.
_CANCEL_WAIT_S = 10.0


def path_segment(request: Request, index: int) -> str:
    return request.path.rstrip("/").split("/")[index]


def query(request: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.query, keep_blank_values=True).items()}


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer", name) from None
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}", name)
    return value


def order_param(params: dict[str, str], default: str = "desc") -> str:
    order = params.get("order", default)
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be asc or desc", "order")
    return order


async def _record(store: Store, response_id: str) -> ResponseRecord:
    try:
        record = await store.get_response(response_id)
    except StorageError as exc:
        raise storage_failed(exc) from exc
    if record is None:
        raise APIError(404, f"response '{response_id}' not found", code="not_found")
    return record


async def get_response(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    store = require_store(ctx, "retrieving a response")
    response_id = path_segment(request, 3)
    record = await _record(store, response_id)
    params = query(request)
    if params.get("stream", "false").lower() != "true":
        return json_response(record.response)
    if not record.response.get("background"):
        raise bad_request("only background responses can be streamed again", "stream")
    after = int_param(params, "starting_after", -1, -1, 2**31)
    return StreamingResponse(_replay(store, response_id, after))


async def _replay(store: Store, response_id: str, after: int) -> AsyncIterator[bytes]:
    """The stored events after ``after``, then the rest as the run (anywhere) stores them."""
    while True:
        events = await store.events_after(response_id, after)
        for sequence, data in events:
            after = sequence
            yield data
        if events:
            continue
        record = await store.get_response(response_id)
        if record is None or record.response["status"] in _TERMINAL:
            # Events the run flushed with its final state.
            for sequence, data in await store.events_after(response_id, after):
                after = sequence
                yield data
            return
        await asyncio.sleep(_REPLAY_POLL_S)


async def delete_response(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "deleting a response")
    response_id = path_segment(request, 3)
    try:
        deleted = await store.delete_response(response_id)
    except StorageError as exc:
        raise storage_failed(exc) from exc
    if not deleted:
        raise APIError(404, f"response '{response_id}' not found", code="not_found")
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "cancelling a response")
    response_id = path_segment(request, 3)
    record = await _record(store, response_id)
    if not record.response.get("background"):
        raise bad_request("only background responses can be cancelled", "response_id")
    if record.response["status"] in _TERMINAL:
        return json_response(record.response)
    task = RUNNING.get(response_id)
    try:
        await store.request_cancel(response_id)
    except StorageError as exc:
        raise storage_failed(exc) from exc
    if task is not None:
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_WAIT_S)
    deadline = time.monotonic() + _CANCEL_WAIT_S
    while True:
        record = await _record(store, response_id)
        if record.response["status"] in _TERMINAL or time.monotonic() >= deadline:
            return json_response(record.response)
        await asyncio.sleep(_REPLAY_POLL_S)


async def list_input_items(ctx: ServingContext, request: Request) -> Response:
    store = require_store(ctx, "listing input items")
    record = await _record(store, path_segment(request, 3))
    params = query(request)
    items = record.input_items
    return json_response(
        paginate(
            items if order_param(params) == "asc" else items[::-1],
            params.get("after"),
            int_param(params, "limit", 20, 1, 100),
        )
    )


def paginate(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    start = 0
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(f"no item '{after}' to list after", "after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return list_object(page, start + limit < len(items))


def list_object(page: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": has_more,
    }
