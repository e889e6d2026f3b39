"""The PostgreSQL backend: one database shared by every gateway process and replica.

An asyncpg pool per process (``?pool_max=N``, default 4: the store's queries are short, and a
gateway runs one process per core, so a few connections each are plenty and keep a fleet under
the server's ``max_connections``). The schema is a list of migrations, applied in order the
first time a process uses the store, under a transaction-scoped advisory lock so gateways
starting together neither race nor fail on each other's ``CREATE TABLE``. Documents are JSONB.

URL options (removed before the rest of the URL goes to asyncpg, which sends unknown query
parameters to the server as settings): ``pool_max`` (connections per process, default 4) and
``connect_timeout`` (seconds, default 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

from herdsman.storage.base import Json, Order, Page, ResponseRecord, StorageError

DEFAULT_POOL_MAX = 4
DEFAULT_CONNECT_TIMEOUT = 10.0

# pg_advisory_xact_lock's key for migrating: any constant, the same in every herdsman.
MIGRATION_LOCK = 0x6865726473_6D6E  # "herdsmn"

# Applied in order, each in the transaction that records it in herdsman_schema_version.
# Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE herdsman_responses (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        response JSONB NOT NULL,
        input_items JSONB NOT NULL,
        context JSONB NOT NULL
    );
    -- Apart from the response, so rewriting a background response keeps a cancel request.
    CREATE TABLE herdsman_response_cancels (id TEXT PRIMARY KEY);
    CREATE TABLE herdsman_response_events (
        response_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (response_id, seq)
    );
    CREATE TABLE herdsman_conversations (id TEXT PRIMARY KEY, doc JSONB NOT NULL);
    -- pos orders a conversation's items. Appends to one conversation hold its row's lock
    -- (add_items), so within a conversation pos grows in the order appends commit, and a
    -- reader paging by pos never sees a smaller pos appear behind its cursor.
    CREATE TABLE herdsman_conversation_items (
        pos BIGSERIAL PRIMARY KEY,
        conversation_id TEXT NOT NULL
            REFERENCES herdsman_conversations (id) ON DELETE CASCADE,
        item_id TEXT NOT NULL,
        doc JSONB NOT NULL,
        UNIQUE (conversation_id, item_id)
    );
    CREATE INDEX herdsman_conversation_items_order
        ON herdsman_conversation_items (conversation_id, pos);
    """,
]

# What a dead, refusing or failing server raises (TimeoutError is an OSError).
_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _loads(text: str) -> Any:
    return msgspec.json.decode(text)


def parse_url(url: str) -> tuple[str, int, float]:
    """``(dsn for asyncpg, pool_max, connect_timeout)``; ValueError on a bad option."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    pool_max = DEFAULT_POOL_MAX
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "pool_max":
            pool_max = _number(url, key, value, int)
            if pool_max < 1:
                raise ValueError(f"storage URL {_redact(url)!r}: pool_max must be at least 1")
        elif key == "connect_timeout":
            connect_timeout = _number(url, key, value, float)
            if connect_timeout <= 0:
                raise ValueError(f"storage URL {_redact(url)!r}: connect_timeout must be > 0")
        else:
            rest.append((key, value))
    # asyncpg takes postgresql:// and postgres:// alike.
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return dsn, pool_max, connect_timeout


def _number(url: str, key: str, value: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(
            f"storage URL {_redact(url)!r}: {key} must be a number, not {value!r}"
        ) from None


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PostgresStore:
    """A ``Store`` in a PostgreSQL database; connects on first use."""

    def __init__(self, url: str) -> None:
        self._dsn, self.pool_max, self.connect_timeout = parse_url(url)
        self._where = _redact(url)
        self._pool: asyncpg.Pool | None = None
        # (pid, loop) the pool belongs to: asyncpg connections are bound to their event loop,
        # and a forked child must not share its parent's sockets.
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # --- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except _FAILURES as exc:
            raise StorageError(f"PostgreSQL {self._where}: {exc}") from exc

    async def _get_pool(self) -> asyncpg.Pool:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._owner != owner:
            self._abandon()
            self._owner = owner
            self._lock = asyncio.Lock()
        if self._pool is not None:
            return self._pool
        assert self._lock is not None
        async with self._lock:  # one pool, however many first calls arrive together
            if self._pool is None:
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> asyncpg.Pool:
        with self._failures():
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self.pool_max,
                timeout=self.connect_timeout,
            )
        try:
            with self._failures():
                await self._migrate(pool)
        except BaseException:
            pool.terminate()
            raise
        return pool

    @staticmethod
    async def _migrate(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            # Taken before anything else, even CREATE TABLE IF NOT EXISTS (which can fail
            # with a unique violation when two sessions run it at once); released at commit.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS herdsman_schema_version ("
                " version INTEGER PRIMARY KEY,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM herdsman_schema_version"
            )
            for number in range(version, len(MIGRATIONS)):
                await conn.execute(MIGRATIONS[number])
                await conn.execute(
                    "INSERT INTO herdsman_schema_version (version) VALUES ($1)", number + 1
                )

    def _abandon(self) -> None:
        """Drop a pool made by another process or event loop, without awaiting anything."""
        pool, self._pool = self._pool, None
        if pool is None or self._owner is None or self._owner[0] != os.getpid():
            return  # nothing, or the parent's sockets (closing them here would not help it)
        # With its loop closed this may fail midway; the sockets then close when collected.
        with contextlib.suppress(Exception):
            pool.terminate()

    async def close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        if self._owner != (os.getpid(), asyncio.get_running_loop()):
            self._abandon()
            return
        self._pool = None
        try:
            await pool.close()
        except _FAILURES:
            pool.terminate()

    # --- responses ----------------------------------------------------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        pool = await self._get_pool()
        with self._failures():
            await pool.execute(
                "INSERT INTO herdsman_responses (id, created_at, response, input_items, context)"
                " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb)"
                " ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at,"
                " response = EXCLUDED.response, input_items = EXCLUDED.input_items,"
                " context = EXCLUDED.context",
                record.id,
                record.created_at,
                _dumps(record.response),
                _dumps(record.input_items),
                _dumps(record.context),
            )

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        pool = await self._get_pool()
        with self._failures():
            row = await pool.fetchrow(
                "SELECT created_at, response::text, input_items::text, context::text"
                " FROM herdsman_responses WHERE id = $1",
                response_id,
            )
        if row is None:
            return None
        return ResponseRecord(
            id=response_id,
            created_at=row[0],
            response=_loads(row[1]),
            input_items=_loads(row[2]),
            context=_loads(row[3]),
        )

    async def delete_response(self, response_id: str) -> bool:
        pool = await self._get_pool()
        with self._failures():
            async with pool.acquire() as conn, conn.transaction():
                found = await conn.fetchval(
                    "DELETE FROM herdsman_responses WHERE id = $1 RETURNING true", response_id
                )
                await conn.execute(
                    "DELETE FROM herdsman_response_events WHERE response_id = $1", response_id
                )
                await conn.execute(
                    "DELETE FROM herdsman_response_cancels WHERE id = $1", response_id
                )
        return bool(found)

    async def request_cancel(self, response_id: str) -> None:
        pool = await self._get_pool()
        with self._failures():
            await pool.execute(
                "INSERT INTO herdsman_response_cancels (id) VALUES ($1)"
                " ON CONFLICT (id) DO NOTHING",
                response_id,
            )

    async def cancel_requested(self, response_id: str) -> bool:
        pool = await self._get_pool()
        with self._failures():
            found = await pool.fetchval(
                "SELECT true FROM herdsman_response_cancels WHERE id = $1", response_id
            )
        return bool(found)

    async def append_events(self, response_id: str, events: list[tuple[int, bytes]]) -> None:
        if not events:
            return
        # One INSERT may not touch a row twice: of repeated sequence numbers the last one wins,
        # as it would appended one by one.
        latest = dict(events)
        pool = await self._get_pool()
        with self._failures():
            await pool.execute(
                "INSERT INTO herdsman_response_events (response_id, seq, data)"
                " SELECT $1, e.seq, e.data FROM unnest($2::bigint[], $3::bytea[]) AS e(seq, data)"
                " ON CONFLICT (response_id, seq) DO UPDATE SET data = EXCLUDED.data",
                response_id,
                list(latest),
                [bytes(data) for data in latest.values()],
            )

    async def events_after(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        pool = await self._get_pool()
        with self._failures():
            rows = await pool.fetch(
                "SELECT seq, data FROM herdsman_response_events"
                " WHERE response_id = $1 AND seq > $2 ORDER BY seq",
                response_id,
                after,
            )
        return [(row[0], row[1]) for row in rows]

    # --- conversations ------------------------------------------------------------------------

    async def put_conversation(self, conversation: Json) -> None:
        pool = await self._get_pool()
        with self._failures():
            await pool.execute(
                "INSERT INTO herdsman_conversations (id, doc) VALUES ($1, $2::jsonb)"
                " ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
                conversation["id"],
                _dumps(conversation),
            )

    async def get_conversation(self, conversation_id: str) -> Json | None:
        pool = await self._get_pool()
        with self._failures():
            doc = await pool.fetchval(
                "SELECT doc::text FROM herdsman_conversations WHERE id = $1", conversation_id
            )
        return None if doc is None else _loads(doc)

    async def delete_conversation(self, conversation_id: str) -> bool:
        pool = await self._get_pool()
        with self._failures():
            # Its items go by ON DELETE CASCADE, in the same statement.
            found = await pool.fetchval(
                "DELETE FROM herdsman_conversations WHERE id = $1 RETURNING true",
                conversation_id,
            )
        return bool(found)

    async def add_items(self, conversation_id: str, items: list[Json]) -> None:
        if not items:
            return
        rows = [(conversation_id, item["id"], _dumps(item)) for item in items]
        pool = await self._get_pool()
        with self._failures():
            async with pool.acquire() as conn, conn.transaction():
                # The conversation's row lock serializes appends to it (see the items table),
                # and a conversation deleted meanwhile is not appended to.
                exists = await conn.fetchval(
                    "SELECT true FROM herdsman_conversations WHERE id = $1 FOR UPDATE",
                    conversation_id,
                )
                if not exists:
                    return
                # Row by row, in order: each takes the next pos; a known id is updated in
                # place and keeps its position.
                await conn.executemany(
                    "INSERT INTO herdsman_conversation_items (conversation_id, item_id, doc)"
                    " VALUES ($1, $2, $3::jsonb) ON CONFLICT (conversation_id, item_id)"
                    " DO UPDATE SET doc = EXCLUDED.doc",
                    rows,
                )

    async def list_items(
        self, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql = "SELECT doc::text FROM herdsman_conversation_items WHERE conversation_id = $1"
        args: list[Any] = [conversation_id]
        if after is not None:
            # An unknown cursor makes the subquery NULL, and the page empty.
            sql += (
                f" AND pos {op} (SELECT pos FROM herdsman_conversation_items"
                " WHERE conversation_id = $1 AND item_id = $3)"
            )
        sql += f" ORDER BY pos {direction} LIMIT $2"
        args.append(limit + 1)  # one more than asked tells whether more follow
        if after is not None:
            args.append(after)
        pool = await self._get_pool()
        with self._failures():
            rows = await pool.fetch(sql, *args)
        return Page(data=[_loads(row[0]) for row in rows[:limit]], has_more=len(rows) > limit)

    async def get_item(self, conversation_id: str, item_id: str) -> Json | None:
        pool = await self._get_pool()
        with self._failures():
            doc = await pool.fetchval(
                "SELECT doc::text FROM herdsman_conversation_items"
                " WHERE conversation_id = $1 AND item_id = $2",
                conversation_id,
                item_id,
            )
        return None if doc is None else _loads(doc)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        pool = await self._get_pool()
        with self._failures():
            found = await pool.fetchval(
                "DELETE FROM herdsman_conversation_items"
                " WHERE conversation_id = $1 AND item_id = $2 RETURNING true",
                conversation_id,
                item_id,
            )
        return bool(found)
