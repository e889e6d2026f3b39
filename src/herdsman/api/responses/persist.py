"""What the Responses API keeps: the store a request needs, and a finished response written to
it (and to its conversation)."""

from __future__ import annotations

import logging

from herdsman.api.errors import APIError, bad_request
from herdsman.api.responses.items import (
    Item,
)
from herdsman.api.responses.run import Prepared
from herdsman.pipeline.context import ServingContext
from herdsman.storage import ResponseRecord, StorageError, Store

log = logging.getLogger(__name__)


def require_store(ctx: ServingContext, what: str) -> Store:
    store = ctx.store
    if store is None:
        raise bad_request(
            f"{what} needs storage, and this gateway runs with --storage none", "store"
        )
    return store


def storage_failed(exc: StorageError) -> APIError:
    return APIError(503, f"the response store is unavailable: {exc}", code="storage_unavailable")


async def all_items(store: Store, conversation_id: str) -> list[Item]:
    items: list[Item] = []
    after: str | None = None
    while True:
        page = await store.list_items(conversation_id, after=after, limit=100, order="asc")
        items += page.data
        if not page.has_more or not page.data:
            return items
        after = page.data[-1]["id"]


def record_of(prepared: Prepared) -> ResponseRecord:
    response = prepared.builder.response
    return ResponseRecord(
        id=response["id"],
        created_at=response["created_at"],
        response=response,
        input_items=prepared.input_items,
        context=prepared.history + prepared.input_items + response["output"],
    )


async def save(prepared: Prepared, *, strict: bool) -> None:
    """Store the finished response (and extend its conversation). ``strict``: a storage failure
    is the client's error (503); otherwise (the answer already went out) it is logged."""
    store = prepared.store
    if store is None:
        return
    try:
        await store.put_response(record_of(prepared))
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
