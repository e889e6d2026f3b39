"""The SQLite backend: one file, shared by every gateway process on the machine.

Every call runs on the store's one worker thread, over one connection: ``sqlite3`` blocks, and
one thread keeps its calls off the event loop without a pool to size. The file is in WAL mode
(readers never wait for the writer), each write is one ``BEGIN IMMEDIATE`` transaction (it takes
the write lock up front, so two processes never both read and then both try to upgrade, which
SQLite answers with an immediate SQLITE_BUSY that ``busy_timeout`` does not wait out), and a
writer waits up to ``busy_timeout`` for another process's write to finish.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from herdsman.storage.base import Json, Order, Page, ResponseRecord, StorageError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

# Applied in order; PRAGMA user_version is how many have been. Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        response TEXT NOT NULL,
        input_items TEXT NOT NULL,
        context TEXT NOT NULL
    );
    -- Apart from the response, so rewriting a background response keeps a cancel request.
    CREATE TABLE response_cancels (id TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE response_events (
        response_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (response_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE conversations (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    -- pos (the rowid) orders a conversation's items: writes are serialized, so it grows in
    -- the order appends commit.
    CREATE TABLE conversation_items (
        pos INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE (conversation_id, item_id)
    );
    CREATE INDEX conversation_items_order ON conversation_items (conversation_id, pos);
    """,
]


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _loads(text: str) -> Any:
    return msgspec.json.decode(text)


class SqliteStore:
    """A ``Store`` in the SQLite file at ``path`` (created, with its directory, on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Both made on first use, by the process that uses them (see _executor_for).
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        # Only ever touched on the worker thread.
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # --- plumbing -----------------------------------------------------------------------------

    def _executor_for_this_process(self) -> ThreadPoolExecutor:
        # A forked child inherits the executor object but not its thread: work sent to it would
        # never run. So a child starts its own thread and connection (SQLite connections must
        # not cross a fork either); the parent's stay the parent's.
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"herdsman-sqlite-{self.path.name}"
            )
            self._pid = os.getpid()
            self._conn = None
        return self._executor

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor_for_this_process()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """On the worker thread: open if needed, run ``fn``, turn SQLite's errors into ours."""
        try:
            if self._conn is None:
                self._conn = self._open()
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite {self.path}: {exc}") from exc
        except OSError as exc:  # the directory could not be made
            raise StorageError(f"SQLite {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock. Processes opening the same new
        # file at once can get "database is locked" here without the busy handler being asked
        # (SQLite does not wait on some locks during that switch), so it is retried.
        deadline = BUSY_TIMEOUT_MS / 1000
        waited = 0.0
        delay = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or waited >= deadline:
                    raise
            time.sleep(delay)  # on the worker thread, never the event loop
            waited += delay
            delay = min(delay * 2, 0.1)
        if str(mode).lower() != "wal":
            raise StorageError(f"SQLite {self.path}: cannot use WAL (journal_mode is {mode})")

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            return  # the common case: no write lock taken
        with _write(conn):
            # Read again under the write lock: another process may have just migrated.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[number]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        if self._pid != os.getpid():
            return  # the parent's, inherited by a fork: not ours to close

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, shut)
        # The thread is idle now; it exits without being waited for.
        executor.shutdown(wait=False)

    # --- responses ----------------------------------------------------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        row = (
            record.id,
            record.created_at,
            _dumps(record.response),
            _dumps(record.input_items),
            _dumps(record.context),
        )

        def put(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.execute(
                    "INSERT INTO responses (id, created_at, response, input_items, context)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                    " created_at = excluded.created_at, response = excluded.response,"
                    " input_items = excluded.input_items, context = excluded.context",
                    row,
                )

        await self._run(put)

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        def get(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT created_at, response, input_items, context FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()

        row = await self._run(get)
        if row is None:
            return None
        created_at, response, input_items, context = row
        return ResponseRecord(
            id=response_id,
            created_at=created_at,
            response=_loads(response),
            input_items=_loads(input_items),
            context=_loads(context),
        )

    async def delete_response(self, response_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                found = conn.execute("DELETE FROM responses WHERE id = ?", (response_id,))
                conn.execute("DELETE FROM response_events WHERE response_id = ?", (response_id,))
                conn.execute("DELETE FROM response_cancels WHERE id = ?", (response_id,))
                return found.rowcount > 0

        return await self._run(delete)

    async def request_cancel(self, response_id: str) -> None:
        def flag(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.execute(
                    "INSERT INTO response_cancels (id) VALUES (?) ON CONFLICT (id) DO NOTHING",
                    (response_id,),
                )

        await self._run(flag)

    async def cancel_requested(self, response_id: str) -> bool:
        def check(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT 1 FROM response_cancels WHERE id = ?", (response_id,))
            return row.fetchone() is not None

        return await self._run(check)

    async def append_events(self, response_id: str, events: list[tuple[int, bytes]]) -> None:
        if not events:
            return
        rows = [(response_id, seq, bytes(data)) for seq, data in events]

        def append(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.executemany(
                    "INSERT INTO response_events (response_id, seq, data) VALUES (?, ?, ?)"
                    " ON CONFLICT (response_id, seq) DO UPDATE SET data = excluded.data",
                    rows,
                )

        await self._run(append)

    async def events_after(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        def read(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return conn.execute(
                "SELECT seq, data FROM response_events WHERE response_id = ? AND seq > ?"
                " ORDER BY seq",
                (response_id, after),
            ).fetchall()

        return await self._run(read)

    # --- conversations ------------------------------------------------------------------------

    async def put_conversation(self, conversation: Json) -> None:
        row = (conversation["id"], _dumps(conversation))

        def put(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.execute(
                    "INSERT INTO conversations (id, doc) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                    row,
                )

        await self._run(put)

    async def get_conversation(self, conversation_id: str) -> Json | None:
        def get(conn: sqlite3.Connection) -> tuple[str] | None:
            return conn.execute(
                "SELECT doc FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()

        row = await self._run(get)
        return None if row is None else _loads(row[0])

    async def delete_conversation(self, conversation_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                found = conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                conn.execute(
                    "DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,)
                )
                return found.rowcount > 0

        return await self._run(delete)

    async def add_items(self, conversation_id: str, items: list[Json]) -> None:
        if not items:
            return
        rows = [(conversation_id, item["id"], _dumps(item)) for item in items]

        def add(conn: sqlite3.Connection) -> None:
            with _write(conn):
                exists = conn.execute(
                    "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                if exists is None:
                    return
                # On a known id the row is updated, so the item keeps its position (pos).
                conn.executemany(
                    "INSERT INTO conversation_items (conversation_id, item_id, doc)"
                    " VALUES (?, ?, ?) ON CONFLICT (conversation_id, item_id)"
                    " DO UPDATE SET doc = excluded.doc",
                    rows,
                )

        await self._run(add)

    async def list_items(
        self, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        _check_page(limit, order)
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql = "SELECT doc FROM conversation_items WHERE conversation_id = ?"
        args: list[Any] = [conversation_id]
        if after is not None:
            # An unknown cursor makes the subquery NULL, and the page empty.
            sql += (
                f" AND pos {op} (SELECT pos FROM conversation_items"
                " WHERE conversation_id = ? AND item_id = ?)"
            )
            args += [conversation_id, after]
        sql += f" ORDER BY pos {direction} LIMIT ?"
        args.append(limit + 1)  # one more than asked tells whether more follow

        def read(conn: sqlite3.Connection) -> list[tuple[str]]:
            return conn.execute(sql, args).fetchall()

        rows = await self._run(read)
        return Page(data=[_loads(doc) for (doc,) in rows[:limit]], has_more=len(rows) > limit)

    async def get_item(self, conversation_id: str, item_id: str) -> Json | None:
        def get(conn: sqlite3.Connection) -> tuple[str] | None:
            return conn.execute(
                "SELECT doc FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                (conversation_id, item_id),
            ).fetchone()

        row = await self._run(get)
        return None if row is None else _loads(row[0])

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _write(conn):
                found = conn.execute(
                    "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                    (conversation_id, item_id),
                )
                return found.rowcount > 0

        return await self._run(delete)


def _check_page(limit: int, order: Order) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, holding the database's write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (SQLITE_FULL, ...) have already rolled back; a second ROLLBACK would
        # raise and hide the first error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT the open transaction first; one statement at a time keeps
    # the migration and its user_version in the same transaction.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement:
                yield statement
