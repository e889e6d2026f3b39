"""Where the Responses and Conversations APIs keep what they store.

``open_store(url)`` picks a backend by the URL's scheme and returns at once: a backend opens
its file, connection or pool (and creates its schema) on its first call, inside the event loop
that makes it. So a gateway that never stores anything creates no file and opens no
connection, and importing this package imports no database driver (each backend module is
imported only when its scheme is chosen).

Each backend binds its connections to the process and event loop of the call that opened them;
called from another process (a fork) or another loop, it leaves those behind and opens new
ones, so a store made before the workers fork, or used by tests that each run their own loop,
keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from herdsman.storage.base import Json, Order, Page, ResponseRecord, StorageError, Store

__all__ = [
    "Json",
    "Order",
    "Page",
    "ResponseRecord",
    "StorageError",
    "Store",
    "default_storage_url",
    "open_store",
]

ACCEPTED = (
    "none, sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH, postgresql://… (or postgres://…), "
    "redis://… (or rediss://…)"
)


def default_storage_url() -> str:
    """A SQLite file under ``$XDG_DATA_HOME/herdsman`` (``~/.local/share/herdsman`` without it)."""
    # An empty or relative XDG_DATA_HOME is invalid by the XDG spec and is ignored.
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return "sqlite:///" + str(root / "herdsman" / "herdsman.db").lstrip("/")


def open_store(url: str) -> Store | None:
    """The backend ``url`` names (``None`` for ``none``), not yet connected.

    Raises ``ValueError`` for a URL no backend accepts, or a bad backend option."""
    text = url.strip()
    if text.lower() == "none":
        return None
    scheme = urlsplit(text).scheme.lower() if ":" in text else ""
    if scheme == "sqlite":
        from herdsman.storage.sqlite import SqliteStore

        return SqliteStore(_sqlite_path(text))
    if scheme in ("postgresql", "postgres"):
        from herdsman.storage.postgres import PostgresStore

        return PostgresStore(text)
    if scheme in ("redis", "rediss"):
        from herdsman.storage.redis import RedisStore

        return RedisStore(text)
    raise ValueError(f"unsupported storage URL {url!r}: expected one of {ACCEPTED}")


def _sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path`` -> ``/abs/path``; ``sqlite:rel/path`` -> ``$PWD/rel/path``."""
    parts = urlsplit(url)
    if parts.netloc:
        # sqlite://host/path: a host means nothing to SQLite, and sqlite://path (two slashes)
        # is a common slip for a relative path that would otherwise silently lose its first part.
        raise ValueError(
            f"unsupported storage URL {url!r}: a SQLite URL has no host; "
            "use sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"unsupported storage URL {url!r}: SQLite takes no options")
    if not parts.path or parts.path.endswith("/"):
        raise ValueError(f"unsupported storage URL {url!r}: no database file named")
    # Resolved now, so a later chdir does not move the database.
    return Path(parts.path).expanduser().absolute()
