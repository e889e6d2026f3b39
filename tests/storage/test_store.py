"""The Store contract, run against every backend over real servers (SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.storage_servers import free_port

from herdsman.storage import (
    Page,
    ResponseRecord,
    StorageError,
    Store,
    default_storage_url,
    open_store,
)
from herdsman.storage.postgres import PostgresStore
from herdsman.storage.redis import RedisStore
from herdsman.storage.sqlite import SqliteStore

Json = dict[str, Any]


def record(response_id: str, *, status: str = "completed", text: str = "Hello!") -> ResponseRecord:
    message = {
        "id": f"msg_{response_id}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return ResponseRecord(
        id=response_id,
        created_at=1_700_000_000,
        response={
            "id": response_id,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "model": "qwen3",
            "output": [message],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
            "metadata": {},
        },
        input_items=[{"id": f"in_{response_id}", "type": "message", "role": "user"}],
        context=[{"id": f"in_{response_id}", "type": "message", "role": "user"}, message],
    )


def conversation(conversation_id: str, **metadata: str) -> Json:
    return {
        "id": conversation_id,
        "object": "conversation",
        "created_at": 1_700_000_000,
        "metadata": metadata,
    }


def item(item_id: str, text: str = "") -> Json:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text or f"text of {item_id}"}],
    }


def ids(items: list[Json]) -> list[str]:
    return [found["id"] for found in items]


async def walk(store: Store, conversation_id: str, order: str, limit: int) -> list[str]:
    """Every item id, page by page with the ``after`` cursor, checking each page's shape."""
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_items(conversation_id, after=after, limit=limit, order=order)  # type: ignore[arg-type]
        assert isinstance(page, Page)
        assert len(page.data) <= limit
        seen += ids(page.data)
        if not page.has_more:
            return seen
        assert len(page.data) == limit, "a page with more to follow is full"
        after = page.data[-1]["id"]


# --- responses --------------------------------------------------------------------------------


async def test_response_put_get_replace_delete(store: Store) -> None:
    first = record("resp_1", status="in_progress", text="")
    await store.put_response(first)
    assert await store.get_response("resp_1") == first

    # A background response is rewritten as it progresses: the last write wins.
    done = record("resp_1", status="completed", text="Done.")
    await store.put_response(done)
    assert await store.get_response("resp_1") == done

    other = record("resp_2")
    await store.put_response(other)
    assert await store.delete_response("resp_1") is True
    assert await store.get_response("resp_1") is None
    assert await store.delete_response("resp_1") is False
    assert await store.get_response("resp_2") == other


async def test_unknown_ids(store: Store) -> None:
    assert await store.get_response("resp_missing") is None
    assert await store.delete_response("resp_missing") is False
    assert await store.cancel_requested("resp_missing") is False
    assert await store.events_after("resp_missing", -1) == []
    assert await store.get_conversation("conv_missing") is None
    assert await store.delete_conversation("conv_missing") is False
    page = await store.list_items("conv_missing", after=None, limit=10, order="asc")
    assert page == Page(data=[], has_more=False)
    assert await store.get_item("conv_missing", "msg_1") is None
    assert await store.delete_item("conv_missing", "msg_1") is False


async def test_cancel_flag(store: Store) -> None:
    await store.put_response(record("resp_1", status="in_progress"))
    assert await store.cancel_requested("resp_1") is False
    await store.request_cancel("resp_1")
    await store.request_cancel("resp_1")  # twice is once
    assert await store.cancel_requested("resp_1") is True
    assert await store.cancel_requested("resp_2") is False
    # The process running it keeps writing the response: the flag stays.
    await store.put_response(record("resp_1", status="in_progress", text="partial"))
    assert await store.cancel_requested("resp_1") is True
    # A cancel may arrive before the first write of the response.
    await store.request_cancel("resp_3")
    assert await store.cancel_requested("resp_3") is True

    assert await store.delete_response("resp_1") is True
    assert await store.cancel_requested("resp_1") is False


async def test_events_append_and_replay(store: Store) -> None:
    frames = [(n, f'event: e\ndata: {{"sequence_number": {n}}}\n\n'.encode()) for n in range(10)]
    await store.append_events("resp_1", frames[:3])
    await store.append_events("resp_1", [])
    await store.append_events("resp_1", frames[3:])
    assert await store.events_after("resp_1", -1) == frames
    assert await store.events_after("resp_1", 0) == frames[1:]
    assert await store.events_after("resp_1", 6) == frames[7:]
    assert await store.events_after("resp_1", 9) == []
    assert await store.events_after("resp_1", 1000) == []

    # Identical frames under different numbers stay distinct; a number stored again replaces
    # its frame; the replay is in number order whatever the append order.
    await store.append_events("resp_2", [(5, b"same"), (2, b"same"), (7, b"x")])
    await store.append_events("resp_2", [(7, b"y"), (3, b"\x00binary\xff")])
    assert await store.events_after("resp_2", -1) == [
        (2, b"same"),
        (3, b"\x00binary\xff"),
        (5, b"same"),
        (7, b"y"),
    ]
    assert await store.events_after("resp_2", 2) == [
        (3, b"\x00binary\xff"),
        (5, b"same"),
        (7, b"y"),
    ]

    await store.put_response(record("resp_1"))
    assert await store.delete_response("resp_1") is True
    assert await store.events_after("resp_1", -1) == []
    assert len(await store.events_after("resp_2", -1)) == 4


# --- conversations ----------------------------------------------------------------------------


async def test_conversation_crud(store: Store) -> None:
    await store.put_conversation(conversation("conv_1", topic="weather"))
    await store.put_conversation(conversation("conv_2"))
    assert await store.get_conversation("conv_1") == conversation("conv_1", topic="weather")

    await store.add_items("conv_1", [item("msg_1"), item("msg_2")])
    # Replacing a conversation (its metadata) keeps its items.
    await store.put_conversation(conversation("conv_1", topic="travel"))
    assert await store.get_conversation("conv_1") == conversation("conv_1", topic="travel")
    assert await walk(store, "conv_1", "asc", 10) == ["msg_1", "msg_2"]

    assert await store.delete_conversation("conv_1") is True
    assert await store.get_conversation("conv_1") is None
    assert await store.delete_conversation("conv_1") is False
    assert await store.get_conversation("conv_2") == conversation("conv_2")


async def test_items_pagination(store: Store) -> None:
    await store.put_conversation(conversation("conv_1"))
    expected = [f"msg_{n:02}" for n in range(7)]
    # Ids that sort differently from their insertion order: order is by insertion only.
    scrambled = ["msg_b", "msg_a", "msg_c"]
    await store.add_items("conv_1", [item(i) for i in expected[:3]])
    await store.add_items("conv_1", [item(i) for i in expected[3:]])
    await store.add_items("conv_1", [item(i) for i in scrambled])
    expected += scrambled

    for limit in (1, 2, 3, 9, 10, 11, 100):
        assert await walk(store, "conv_1", "asc", limit) == expected, limit
        assert await walk(store, "conv_1", "desc", limit) == expected[::-1], limit

    first = await store.list_items("conv_1", after=None, limit=3, order="asc")
    assert ids(first.data) == expected[:3]
    assert first.has_more is True
    assert first.data[0] == item(expected[0])

    middle = await store.list_items("conv_1", after="msg_03", limit=2, order="asc")
    assert ids(middle.data) == ["msg_04", "msg_05"]
    assert middle.has_more is True

    newest = await store.list_items("conv_1", after=None, limit=2, order="desc")
    assert ids(newest.data) == ["msg_c", "msg_a"]
    assert newest.has_more is True

    older = await store.list_items("conv_1", after="msg_03", limit=10, order="desc")
    assert ids(older.data) == ["msg_02", "msg_01", "msg_00"]
    assert older.has_more is False

    # Exactly the rest: no more follow.
    rest = await store.list_items("conv_1", after="msg_06", limit=3, order="asc")
    assert ids(rest.data) == scrambled
    assert rest.has_more is False

    # After the last one in each order: an empty page.
    end = await store.list_items("conv_1", after="msg_c", limit=5, order="asc")
    assert end == Page(data=[], has_more=False)
    end = await store.list_items("conv_1", after="msg_00", limit=5, order="desc")
    assert end == Page(data=[], has_more=False)

    # A cursor that is not an item of this conversation: an empty page.
    await store.put_conversation(conversation("conv_2"))
    await store.add_items("conv_2", [item("msg_other")])
    for cursor in ("msg_unknown", "msg_other"):
        for order in ("asc", "desc"):
            page = await store.list_items("conv_1", after=cursor, limit=5, order=order)  # type: ignore[arg-type]
            assert page == Page(data=[], has_more=False), (cursor, order)

    with pytest.raises(ValueError):
        await store.list_items("conv_1", after=None, limit=0, order="asc")


async def test_items_get_and_delete(store: Store) -> None:
    await store.put_conversation(conversation("conv_1"))
    await store.put_conversation(conversation("conv_2"))
    await store.add_items("conv_1", [item(f"msg_{n}") for n in range(5)])
    await store.add_items("conv_2", [item("msg_x")])

    assert await store.get_item("conv_1", "msg_3") == item("msg_3")
    # An item is found only in its own conversation.
    assert await store.get_item("conv_2", "msg_3") is None
    assert await store.delete_item("conv_2", "msg_3") is False

    assert await store.delete_item("conv_1", "msg_2") is True
    assert await store.delete_item("conv_1", "msg_2") is False
    assert await store.get_item("conv_1", "msg_2") is None
    assert await walk(store, "conv_1", "asc", 2) == ["msg_0", "msg_1", "msg_3", "msg_4"]
    assert await walk(store, "conv_1", "desc", 3) == ["msg_4", "msg_3", "msg_1", "msg_0"]
    page = await store.list_items("conv_1", after="msg_1", limit=1, order="asc")
    assert ids(page.data) == ["msg_3"]
    assert page.has_more is True

    # Appending after a deletion goes at the end.
    await store.add_items("conv_1", [item("msg_5")])
    assert await walk(store, "conv_1", "asc", 10) == ["msg_0", "msg_1", "msg_3", "msg_4", "msg_5"]
    assert await walk(store, "conv_2", "asc", 10) == ["msg_x"]


async def test_known_item_id_is_replaced_where_it_stands(store: Store) -> None:
    await store.put_conversation(conversation("conv_1"))
    await store.add_items("conv_1", [item("msg_0"), item("msg_1"), item("msg_2")])
    await store.add_items("conv_1", [item("msg_1", "new text"), item("msg_3")])
    assert await walk(store, "conv_1", "asc", 10) == ["msg_0", "msg_1", "msg_2", "msg_3"]
    assert await store.get_item("conv_1", "msg_1") == item("msg_1", "new text")
    # Within one batch too.
    await store.add_items("conv_1", [item("msg_4", "a"), item("msg_4", "b")])
    assert await walk(store, "conv_1", "asc", 10) == ["msg_0", "msg_1", "msg_2", "msg_3", "msg_4"]
    assert await store.get_item("conv_1", "msg_4") == item("msg_4", "b")


async def test_items_of_a_missing_conversation_are_not_stored(store: Store) -> None:
    await store.add_items("conv_gone", [item("msg_1")])
    assert await store.get_item("conv_gone", "msg_1") is None
    await store.put_conversation(conversation("conv_gone"))
    assert await walk(store, "conv_gone", "asc", 10) == []


async def test_deleting_a_conversation_deletes_its_items(store: Store) -> None:
    await store.put_conversation(conversation("conv_1"))
    await store.put_conversation(conversation("conv_2"))
    await store.add_items("conv_1", [item(f"msg_{n}") for n in range(4)])
    await store.add_items("conv_2", [item("msg_keep")])
    assert await store.delete_conversation("conv_1") is True

    assert await store.get_item("conv_1", "msg_0") is None
    assert await store.delete_item("conv_1", "msg_1") is False
    page = await store.list_items("conv_1", after=None, limit=10, order="asc")
    assert page == Page(data=[], has_more=False)
    # The same id again starts empty, and numbers its items afresh without clashing.
    await store.put_conversation(conversation("conv_1"))
    assert await walk(store, "conv_1", "asc", 10) == []
    await store.add_items("conv_1", [item("msg_1"), item("msg_new")])
    assert await walk(store, "conv_1", "desc", 1) == ["msg_new", "msg_1"]
    assert await walk(store, "conv_2", "asc", 10) == ["msg_keep"]


# --- documents --------------------------------------------------------------------------------

UNICODE = (
    "Grüße, Zürich! 東京の天気 🌦️👩🏽‍💻 עברית مرحبا ñ e\u0301 \u200b\u2028\u2029 "
    'quotes " \\ backslash / slash \n\r\t newline tab \x01\x1f controls \U0010fffd'
)


async def test_unicode_and_large_documents_round_trip(store: Store) -> None:
    big_text = (UNICODE * 40 + "x" * 1000) * 50  # about 2.5 MB in UTF-8
    response = record("resp_ü", text=big_text)
    response.response["metadata"] = {UNICODE[:20]: UNICODE}
    response.response["numbers"] = {
        "int": 2**53,
        "negative": -(2**31),
        "float": 3.141592653589793,
        "small": -1.2345e-05,
        "tiny": 1.5e-10,
        "bools": [True, False, None],
        "empty": [{}, [], ""],
    }
    response.response["nested"] = {"a": [{"b": [{"c": [1, 2, {"d": "deep"}]}]}]}
    response.context = [item(f"msg_{n}", f"{UNICODE} {n}") for n in range(5000)]
    await store.put_response(response)
    assert await store.get_response("resp_ü") == response

    await store.put_conversation(conversation("conv_東京", note=UNICODE))
    assert await store.get_conversation("conv_東京") == conversation("conv_東京", note=UNICODE)
    items = [item(f"msg_{n}_🌦️", big_text if n == 1 else UNICODE) for n in range(3)]
    await store.add_items("conv_東京", items)
    page = await store.list_items("conv_東京", after="msg_0_🌦️", limit=5, order="asc")
    assert page.data == items[1:]
    assert await store.get_item("conv_東京", "msg_1_🌦️") == items[1]


async def test_nul_characters_round_trip(store: Store, backend: str) -> None:
    if backend == "postgres":
        # JSONB cannot hold U+0000 in a string (the server refuses it): such a document is a
        # StorageError there, never a silently altered document.
        with pytest.raises(StorageError):
            await store.put_response(record("resp_nul", text="a\x00b"))
        assert await store.get_response("resp_nul") is None
        return
    await store.put_response(record("resp_nul", text="a\x00b"))
    assert await store.get_response("resp_nul") == record("resp_nul", text="a\x00b")


# --- lifecycle --------------------------------------------------------------------------------


async def test_persists_across_close_and_reopen(store_url: str) -> None:
    first = open_store(store_url)
    assert first is not None
    await first.put_response(record("resp_1"))
    await first.request_cancel("resp_1")
    await first.append_events("resp_1", [(0, b"zero"), (1, b"one")])
    await first.put_conversation(conversation("conv_1"))
    await first.add_items("conv_1", [item("msg_1"), item("msg_2")])
    await first.close()
    await first.close()  # closing twice is harmless

    second = open_store(store_url)
    assert second is not None
    try:
        assert await second.get_response("resp_1") == record("resp_1")
        assert await second.cancel_requested("resp_1") is True
        assert await second.events_after("resp_1", 0) == [(1, b"one")]
        assert await second.get_conversation("conv_1") == conversation("conv_1")
        assert await walk(second, "conv_1", "desc", 1) == ["msg_2", "msg_1"]
    finally:
        await second.close()

    # A closed store opens again on its next call.
    assert await first.get_response("resp_1") == record("resp_1")
    await first.close()


# The connections left behind in a closed loop can only be reclaimed by the garbage collector,
# which says so (ResourceWarning); collected here, so the warning does not land on a later test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_store_survives_a_new_event_loop(store: Store) -> None:
    # Tests (and a store made before the gateway's loop starts) use one store from several
    # loops: each loop gets its own connections.
    asyncio.run(store.put_conversation(conversation("conv_1")))
    asyncio.run(store.add_items("conv_1", [item("msg_1")]))
    assert asyncio.run(store.get_item("conv_1", "msg_1")) == item("msg_1")
    asyncio.run(store.close())
    gc.collect()


def _use_inherited_store(store: Store) -> None:
    asyncio.run(store.add_items("conv_1", [item("msg_child")]))
    asyncio.run(store.close())


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    # SQLite's worker thread does not survive a fork: a child that sent its calls to the
    # inherited executor would wait forever. It must start its own thread and connection.
    store = open_store(f"sqlite://{tmp_path / 'store.db'}")
    assert store is not None
    asyncio.run(store.put_conversation(conversation("conv_1")))  # the parent's thread is up
    child = multiprocessing.get_context("fork").Process(target=_use_inherited_store, args=(store,))
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
    # The parent's connection still works, and sees the child's write.
    assert asyncio.run(store.get_item("conv_1", "msg_child")) == item("msg_child")
    asyncio.run(store.close())


# --- many processes at once -------------------------------------------------------------------

WRITERS = 4
BATCHES = [1, 3, 2, 5, 1, 4]  # items per append: 16 per writer


def _writer(url: str, index: int, start: Any) -> None:
    """One gateway process: opens the store (first use: its own schema check), then appends
    to the shared conversation and writes its own responses, all at once with the others."""

    async def write() -> None:
        store = open_store(url)
        assert store is not None
        start.wait()
        try:
            # Every writer creates the conversation: the same document, written concurrently.
            await store.put_conversation(conversation("conv_shared"))
            n = 0
            for batch, size in enumerate(BATCHES):
                await store.add_items(
                    "conv_shared", [item(f"w{index}_b{batch}_{k}") for k in range(size)]
                )
                n += size
                response_id = f"resp_w{index}_{batch}"
                await store.put_response(record(response_id, status="in_progress"))
                await store.append_events(response_id, [(batch, f"w{index}".encode())])
                await store.put_response(record(response_id))
        finally:
            await store.close()

    asyncio.run(write())


def test_concurrent_writers_in_many_processes(store_url: str) -> None:
    # spawn: a fresh interpreter per writer, as separate gateway processes are (a fork would
    # copy this test process's threads and loop state).
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [
        context.Process(target=_writer, args=(store_url, index, start), daemon=True)
        for index in range(WRITERS)
    ]
    for process in writers:
        process.start()
    start.set()  # all opening the store and writing at once
    for process in writers:
        process.join(300)
        assert process.exitcode == 0, f"writer {process.name} exited with {process.exitcode}"

    async def check() -> None:
        store = open_store(store_url)
        assert store is not None
        try:
            found = await walk(store, "conv_shared", "asc", 7)
            assert await walk(store, "conv_shared", "desc", 5) == found[::-1]
            expected = {
                f"w{index}_b{batch}_{k}"
                for index in range(WRITERS)
                for batch, size in enumerate(BATCHES)
                for k in range(size)
            }
            assert len(found) == len(expected), "every item exactly once"
            assert set(found) == expected
            position = {item_id: n for n, item_id in enumerate(found)}
            for index in range(WRITERS):
                # Each writer's appends land in the order it made them ...
                firsts = [position[f"w{index}_b{batch}_0"] for batch in range(len(BATCHES))]
                assert firsts == sorted(firsts)
                for batch, size in enumerate(BATCHES):
                    # ... and each append is one contiguous run: none was interleaved.
                    run = [position[f"w{index}_b{batch}_{k}"] for k in range(size)]
                    assert run == list(range(run[0], run[0] + size)), (index, batch, run)
                    response_id = f"resp_w{index}_{batch}"
                    assert await store.get_response(response_id) == record(response_id)
                    assert await store.events_after(response_id, -1) == [
                        (batch, f"w{index}".encode())
                    ]
        finally:
            await store.close()

    asyncio.run(check())


# --- backend specifics ------------------------------------------------------------------------


async def test_sqlite_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "still" / "herdsman.db"
    store = open_store(f"sqlite://{path}")
    assert isinstance(store, SqliteStore)
    assert not path.parent.exists(), "opening creates nothing"
    await store.close()
    assert not path.parent.exists(), "closing an unused store creates nothing"
    try:
        await store.put_conversation(conversation("conv_1"))
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_postgres_schema_is_migrated_once(store_url: str) -> None:
    import asyncpg

    stores = [open_store(store_url) for _ in range(3)]
    try:
        # First uses at once, each its own pool: the advisory lock orders the migrations.
        await asyncio.gather(*(s.get_conversation("conv_1") for s in stores if s is not None))
    finally:
        for s in stores:
            if s is not None:
                await s.close()
    conn = await asyncpg.connect(store_url)
    try:
        versions = await conn.fetch("SELECT version FROM herdsman_schema_version ORDER BY 1")
        assert [row[0] for row in versions] == [1]
        kind = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'herdsman_responses' AND column_name = 'response'"
        )
        assert kind == "jsonb"
    finally:
        await conn.close()


async def test_redis_keys_expire(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        for query, expected_ttl in (("&ttl=120", 120), ("", 2_592_000), ("&ttl=0", None)):
            prefix = f"ttl_{uuid.uuid4().hex}:"
            store = open_store(f"{redis_url}?prefix={prefix}{query}")
            assert isinstance(store, RedisStore)
            try:
                await store.append_events("resp_1", [(0, b"early event")])
                await store.put_response(record("resp_1"))
                await store.append_events("resp_1", [(1, b"event")])
                await store.request_cancel("resp_1")
                await store.put_conversation(conversation("conv_1"))
                await store.add_items("conv_1", [item("msg_1")])
            finally:
                await store.close()
            keys = sorted([k.decode() async for k in client.scan_iter(match=prefix + "*")])
            response_keys = [k for k in keys if k.startswith(prefix + "resp:")]
            conversation_keys = [k for k in keys if k.startswith(prefix + "conv:")]
            assert len(response_keys) == 3, keys  # the record, its events, its cancel flag
            assert len(conversation_keys) >= 3, keys
            assert len(keys) == len(response_keys) + len(conversation_keys), keys
            for key in response_keys:
                ttl = await client.ttl(key)
                if expected_ttl is None:
                    assert ttl == -1, (key, ttl)  # no expiry
                else:
                    # TTL counts down in whole seconds; no test waits for it.
                    assert expected_ttl - 60 < ttl <= expected_ttl, (key, ttl)
            for key in conversation_keys:
                assert await client.ttl(key) == -1, key  # conversations never expire
    finally:
        await client.aclose()


async def test_unreachable_servers_fail_with_storage_error() -> None:
    port = free_port()  # nothing listens there
    for url in (
        f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5",
        f"redis://127.0.0.1:{port}/0",
    ):
        store = open_store(url)
        assert store is not None
        try:
            with pytest.raises(StorageError):
                await store.get_response("resp_1")
            with pytest.raises(StorageError):
                await store.put_conversation(conversation("conv_1"))
        finally:
            await store.close()


# --- open_store -------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_store("none") is None

    store = open_store(f"sqlite://{tmp_path}/a/b.db")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "a" / "b.db"
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:rel/c.db")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "rel" / "c.db"
    assert not (tmp_path / "a").exists() and not (tmp_path / "rel").exists()

    for url in ("postgresql://u:secret@db.example:5432/app", "postgres://db.example/app"):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        assert store.pool_max == 4
        assert "secret" not in repr(store)
    store = open_store("postgresql://db.example/app?pool_max=9&application_name=gw")
    assert isinstance(store, PostgresStore)
    assert store.pool_max == 9

    store = open_store("redis://127.0.0.1:6379/0")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.ttl) == ("herdsman:", 2_592_000)
    store = open_store("rediss://cache.example:6380/2?prefix=staging&ttl=0")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.ttl) == ("staging:", 0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db.example/app", "sqlite:///"),
        ("", "postgresql://"),
        ("memory", "redis://"),
        ("sqlite://host/path.db", "no host"),
        ("sqlite:", "no database file"),
        ("sqlite:///tmp/x.db?mode=ro", "no options"),
        ("postgresql://db.example/app?pool_max=0", "pool_max"),
        ("postgresql://db.example/app?pool_max=many", "pool_max"),
        ("postgresql://db.example/app?connect_timeout=-1", "connect_timeout"),
        ("redis://127.0.0.1?ttl=-5", "ttl"),
        ("redis://127.0.0.1?ttl=soon", "ttl"),
    ],
)
def test_open_store_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        open_store(url)


def test_default_storage_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_storage_url() == f"sqlite://{tmp_path}/data/herdsman/herdsman.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage_url() == f"sqlite://{tmp_path}/home/.local/share/herdsman/herdsman.db"
    store = open_store(default_storage_url())
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "home" / ".local" / "share" / "herdsman" / "herdsman.db"


def test_opening_imports_no_driver() -> None:
    # Every gateway process opens the default store: that must not import asyncpg or redis.
    code = (
        "import sys\n"
        "from herdsman.storage import default_storage_url, open_store\n"
        "open_store(default_storage_url())\n"
        "open_store('none')\n"
        "loaded = [m for m in ('asyncpg', 'redis') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "XDG_DATA_HOME": "/nonexistent/herdsman-test"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
