"""Store fixtures over real servers: one PostgreSQL and one Redis per test session (started on
first need), and a fresh, empty store per test in each backend."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from herdsman.storage import Store, open_store

BACKENDS = ["sqlite", "postgres", "redis"]


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of ``backend``, for tests that open it themselves
    (reopening, other processes). Only the servers a selected test needs are started."""
    name = "t_" + uuid.uuid4().hex
    if backend == "sqlite":
        yield f"sqlite://{tmp_path / 'store.db'}"
    elif backend == "postgres":
        server: str = request.getfixturevalue("postgres_url")
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
        yield _with_database(server, name)
        # FORCE: ends sessions a failed test left open. Each database is a copy of template1
        # (several MB), so a long session would otherwise fill the disk.
        asyncio.run(_admin(server, f'DROP DATABASE "{name}" WITH (FORCE)'))
    elif backend == "redis":
        # A unique prefix keeps each test's keys apart in the one server.
        yield f"{request.getfixturevalue('redis_url')}?prefix={name}:"
    else:  # pragma: no cover
        raise AssertionError(backend)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, empty store of each backend. An ``async def`` test that takes it has it closed
    in the test's own event loop (see pytest_pyfunc_call below)."""
    opened = open_store(store_url)
    assert opened is not None
    yield opened
    # A sync test that used it (or a store already closed) leaves nothing bound to a live
    # loop: close() from this new loop only lets go of what remains.
    asyncio.run(opened.close())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs this directory's ``async def`` tests as tests/conftest.py does (a fresh event loop
    per test), and then, in that same loop, closes the stores the test was given: a pool or
    client is bound to the loop that opened it, and can only be closed cleanly there."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        try:
            await pyfuncitem.obj(**kwargs)
        finally:
            for value in kwargs.values():
                if _is_store(value):
                    await value.close()

    asyncio.run(run())
    return True


def _is_store(value: object) -> bool:
    # Store is a Protocol (not runtime-checkable): recognise one by what it does.
    return callable(getattr(value, "list_items", None)) and callable(getattr(value, "close", None))
