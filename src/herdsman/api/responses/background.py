"""Background responses: run to completion without a client, progress and events stored as they
come, cancelled from whichever gateway process or replica the cancel reaches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from herdsman.api.errors import api_error
from herdsman.api.responses.persist import record_of, save, storage_failed
from herdsman.api.responses.run import Prepared, drive, frame
from herdsman.api.sse import encode_json
from herdsman.http import Response, StreamingResponse
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.errors import RequestError
from herdsman.pipeline.generate import Generation
from herdsman.storage import StorageError, Store

log = logging.getLogger(__name__)


_CANCEL_POLL_S = 0.5


_PROGRESS_EVERY_S = 0.5


# Background runs of this process, by response id: a cancel arriving here stops one at once; a
# cancel arriving at another process sets the store's flag, which the run polls.
RUNNING: dict[str, asyncio.Task[None]] = {}


async def start_background(
    ctx: ServingContext, prepared: Prepared, generation: Generation
) -> Response | StreamingResponse:
    store = prepared.store
    assert store is not None
    builder = prepared.builder
    builder.response["status"] = "queued"
    try:
        await store.put_response(record_of(prepared))
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
        async for _ in drive(prepared, generation):
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
        await save(prepared, strict=False)


async def _flush(store: Store, prepared: Prepared, pending: list[tuple[int, bytes]]) -> None:
    if pending:
        await store.append_events(prepared.builder.response["id"], pending[:])
        pending.clear()
    await store.put_response(record_of(prepared))


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
