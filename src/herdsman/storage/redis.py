"""The Redis backend (any server speaking its protocol: Redis, Valkey, ...).

Keys, under a prefix (``herdsman:`` unless ``?prefix=`` says otherwise):

- ``resp:{ID}``: a stored response, the whole record as one JSON string; ``resp:{ID}:events``,
  a sorted set of its streamed events scored by sequence number; ``resp:{ID}:cancel``, its
  cancel flag. All three expire ``?ttl=SECONDS`` (default 30 days; ``0``: never) after their
  last write, and rewriting the response renews the other two.
- ``conv:{ID}``: a conversation's JSON (never expires); ``conv:{ID}:items``, a hash item id ->
  item JSON; ``conv:{ID}:order``, a sorted set of its item ids scored by append order (from
  the counter ``conv:{ID}:seq``), so a cursor is one ZSCORE and a page one range, and deleting
  an item is O(log n), where a list would need O(n) LPOS/LREM.

The braces make the id a hash tag: every key of one response or one conversation lands in the
same Redis Cluster slot, which the multi-key transactions and scripts need there.

Writes that touch more than one key are one MULTI/EXEC transaction or one Lua script, so
appends from many gateway processes interleave as whole batches and never half-apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from herdsman.storage.base import Json, Order, Page, ResponseRecord, StorageError

DEFAULT_PREFIX = "herdsman:"
DEFAULT_TTL = 30 * 24 * 3600
DEFAULT_CONNECT_TIMEOUT = 10.0

# Appends items; an id the conversation already has is rewritten where it stands. Nothing
# happens when the conversation is gone, so a racing delete leaves no orphaned keys.
# KEYS: conversation, items hash, order zset, counter. ARGV: id1, json1, id2, json2, ...
_ADD_ITEMS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do
    if redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
        redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[i])
    end
end
return 1
"""

# One page of items, read in one step so concurrent writes cannot tear it.
# KEYS: order zset, items hash. ARGV: 'asc' | 'desc', count, has-cursor '1' | '0', cursor id.
_LIST_ITEMS = """
local low, high = '-inf', '+inf'
if ARGV[3] == '1' then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[4])
    if not score then return {} end
    if ARGV[1] == 'asc' then low = '(' .. score else high = '(' .. score end
end
local ids
if ARGV[1] == 'asc' then
    ids = redis.call('ZRANGEBYSCORE', KEYS[1], low, high, 'LIMIT', 0, tonumber(ARGV[2]))
else
    ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], high, low, 'LIMIT', 0, tonumber(ARGV[2]))
end
local docs = {}
for i, id in ipairs(ids) do docs[i] = redis.call('HGET', KEYS[2], id) end
return docs
"""


def _dumps(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _loads(data: bytes) -> Any:
    return msgspec.json.decode(data)


def parse_url(url: str) -> tuple[str, str, int]:
    """``(URL for redis-py, key prefix, ttl seconds)``; ValueError on a bad option."""
    parts = urlsplit(url)
    prefix = DEFAULT_PREFIX
    ttl = DEFAULT_TTL
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            # "staging" means "staging:", as the default "herdsman:" reads.
            prefix = value if not value or value.endswith(":") else value + ":"
        elif key == "ttl":
            try:
                ttl = int(value)
            except ValueError:
                raise ValueError(
                    f"storage URL {_redact(url)!r}: ttl must be whole seconds, not {value!r}"
                ) from None
            if ttl < 0:
                raise ValueError(f"storage URL {_redact(url)!r}: ttl must be 0 (never) or more")
        else:
            rest.append((key, value))
    if not any(key == "socket_connect_timeout" for key, _ in rest):
        # redis-py's default is to wait as long as the OS does for an unreachable host.
        rest.append(("socket_connect_timeout", str(DEFAULT_CONNECT_TIMEOUT)))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, ttl


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


class _Client:
    """A redis-py client and its registered scripts, for one process and event loop."""

    def __init__(self, url: str) -> None:
        # Makes no connection yet: redis-py connects on the first command.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url)
        self.add_items = self.redis.register_script(_ADD_ITEMS)
        self.list_items = self.redis.register_script(_LIST_ITEMS)


class RedisStore:
    """A ``Store`` in Redis; connects on first use."""

    def __init__(self, url: str) -> None:
        self._url, self.prefix, self.ttl = parse_url(url)
        self._where = _redact(url)
        self._client: _Client | None = None
        # (pid, loop) the client belongs to: redis-py's asyncio connections are bound to their
        # event loop, and a forked child must not share its parent's sockets.
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r}, ttl={self.ttl})"

    # --- plumbing -----------------------------------------------------------------------------

    def _get(self) -> _Client:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._client is None or self._owner != owner:
            # Another loop's or process's client is dropped, not closed: closing awaits on the
            # loop it belongs to. Its sockets close when it is collected.
            self._client = _Client(self._url)
            self._owner = owner
        return self._client

    @contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StorageError(f"Redis {self._where}: {exc}") from exc

    def _ex(self) -> int | None:
        return self.ttl or None

    def _response_keys(self, response_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}resp:{{{response_id}}}"
        return base, base + ":events", base + ":cancel"

    def _conversation_keys(self, conversation_id: str) -> tuple[str, str, str, str]:
        base = f"{self.prefix}conv:{{{conversation_id}}}"
        return base, base + ":items", base + ":order", base + ":seq"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or self._owner != (os.getpid(), asyncio.get_running_loop()):
            return
        # A broken connection has nothing left to release.
        with contextlib.suppress(RedisError, OSError):
            await client.redis.aclose()

    # --- responses ----------------------------------------------------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        key, events, cancel = self._response_keys(record.id)
        doc = _dumps(
            {
                "id": record.id,
                "created_at": record.created_at,
                "response": record.response,
                "input_items": record.input_items,
                "context": record.context,
            }
        )
        client = self._get()
        with self._failures():
            async with client.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, doc, ex=self._ex())
                if self.ttl:
                    # Its events and cancel flag live as long as it does.
                    pipe.expire(events, self.ttl)
                    pipe.expire(cancel, self.ttl)
                await pipe.execute()

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        client = self._get()
        with self._failures():
            data = await client.redis.get(self._response_keys(response_id)[0])
        if data is None:
            return None
        doc = _loads(data)
        return ResponseRecord(
            id=doc["id"],
            created_at=doc["created_at"],
            response=doc["response"],
            input_items=doc["input_items"],
            context=doc["context"],
        )

    async def delete_response(self, response_id: str) -> bool:
        key, events, cancel = self._response_keys(response_id)
        client = self._get()
        with self._failures():
            async with client.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.delete(events, cancel)
                found, _ = await pipe.execute()
        return bool(found)

    async def request_cancel(self, response_id: str) -> None:
        client = self._get()
        with self._failures():
            await client.redis.set(self._response_keys(response_id)[2], b"1", ex=self._ex())

    async def cancel_requested(self, response_id: str) -> bool:
        client = self._get()
        with self._failures():
            return bool(await client.redis.exists(self._response_keys(response_id)[2]))

    async def append_events(self, response_id: str, events: list[tuple[int, bytes]]) -> None:
        if not events:
            return
        key = self._response_keys(response_id)[1]
        client = self._get()
        with self._failures():
            async with client.redis.pipeline(transaction=True) as pipe:
                for seq, data in events:
                    # The member carries the sequence number, so equal frames stay distinct
                    # members, and an event stored again replaces the old one.
                    pipe.zremrangebyscore(key, seq, seq)
                    pipe.zadd(key, {_event_member(seq, data): seq})
                if self.ttl:
                    pipe.expire(key, self.ttl)
                await pipe.execute()

    async def events_after(self, response_id: str, after: int) -> list[tuple[int, bytes]]:
        client = self._get()
        with self._failures():
            members = await client.redis.zrangebyscore(
                self._response_keys(response_id)[1], f"({after}", "+inf"
            )
        return [_event_from_member(member) for member in members]

    # --- conversations ------------------------------------------------------------------------

    async def put_conversation(self, conversation: Json) -> None:
        client = self._get()
        with self._failures():
            await client.redis.set(
                self._conversation_keys(conversation["id"])[0], _dumps(conversation)
            )

    async def get_conversation(self, conversation_id: str) -> Json | None:
        client = self._get()
        with self._failures():
            data = await client.redis.get(self._conversation_keys(conversation_id)[0])
        return None if data is None else _loads(data)

    async def delete_conversation(self, conversation_id: str) -> bool:
        key, *items = self._conversation_keys(conversation_id)
        client = self._get()
        with self._failures():
            async with client.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.delete(*items)
                found, _ = await pipe.execute()
        return bool(found)

    async def add_items(self, conversation_id: str, items: list[Json]) -> None:
        if not items:
            return
        args: list[str | bytes] = []
        for item in items:
            args += [item["id"], _dumps(item)]
        client = self._get()
        with self._failures():
            await client.add_items(keys=list(self._conversation_keys(conversation_id)), args=args)

    async def list_items(
        self, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        _, items, ordering, _ = self._conversation_keys(conversation_id)
        client = self._get()
        with self._failures():
            docs = await client.list_items(
                keys=[ordering, items],
                # One more than asked tells whether more follow.
                args=[order, limit + 1, "0" if after is None else "1", after or ""],
            )
        found = [_loads(doc) for doc in docs if doc is not None]
        return Page(data=found[:limit], has_more=len(docs) > limit)

    async def get_item(self, conversation_id: str, item_id: str) -> Json | None:
        client = self._get()
        with self._failures():
            data = await client.redis.hget(self._conversation_keys(conversation_id)[1], item_id)
        return None if data is None else _loads(data)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        _, items, ordering, _ = self._conversation_keys(conversation_id)
        client = self._get()
        with self._failures():
            async with client.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(items, item_id)
                pipe.zrem(ordering, item_id)
                found, _ = await pipe.execute()
        return bool(found)


def _event_member(seq: int, data: bytes) -> bytes:
    return seq.to_bytes(8, "big", signed=True) + bytes(data)


def _event_from_member(member: bytes) -> tuple[int, bytes]:
    return int.from_bytes(member[:8], "big", signed=True), member[8:]
