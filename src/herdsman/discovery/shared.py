"""The worker list several gateway replicas share through Redis (``--state-url redis://...``).

A worker added or removed through one replica's admin API is written to a Redis hash (URL ->
role and bootstrap port), so that a replica starting later finds it, and published on a channel,
so that the replicas running now apply it at once, each through its own supervisor's fleet path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from herdsman.discovery.kubernetes import FleetSink

log = logging.getLogger(__name__)

HASH_KEY = "fleet:workers"
CHANNEL = "fleet:changes"
DEFAULT_PREFIX = "herdsman:"
# Query options of --state-url that redis-py takes; herdsman's own (``prefix``) are not passed on.
_REDIS_OPTIONS = frozenset(
    {"db", "username", "password", "socket_timeout", "ssl_cert_reqs", "ssl_ca_certs"}
)

_BACKOFF_MAX = 30.0


class SharedFleet:
    """Publishes this replica's admin changes; applies the other replicas'."""

    def __init__(self, url: str, sink: FleetSink) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        # ?prefix=P: keys P + fleet:... (replicas of another deployment on the same Redis).
        prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
        rest = urlencode([(k, v) for k, v in query if k in _REDIS_OPTIONS])
        self._url = urlunsplit(parts._replace(query=rest))
        self._sink = sink
        self._hash = prefix + HASH_KEY
        self._channel = prefix + CHANNEL
        self.origin = uuid.uuid4().hex
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> list[tuple[str, str, int | None]]:
        """Connect, subscribe, and return the shared workers known now (to add at start)."""
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(self._url)
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)
        self._task = asyncio.get_running_loop().create_task(
            self._listen(pubsub), name="shared fleet"
        )
        self.subscribed.set()
        known = await self._redis.hgetall(self._hash)
        workers = []
        for url, value in known.items():
            entry = json.loads(value)
            workers.append(
                (url.decode(), entry.get("role", "regular"), entry.get("bootstrap_port"))
            )
        return workers

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def added(self, url: str, role: str, bootstrap_port: int | None) -> None:
        entry = json.dumps({"role": role, "bootstrap_port": bootstrap_port})
        try:
            await self._redis.hset(self._hash, url, entry)
        except Exception as exc:
            log.warning("shared fleet: could not record %s: %s", url, exc)
        await self._publish(
            {"op": "add", "url": url, "role": role, "bootstrap_port": bootstrap_port}
        )

    async def removed(self, url: str) -> None:
        try:
            await self._redis.hdel(self._hash, url)
        except Exception as exc:
            log.warning("shared fleet: could not forget %s: %s", url, exc)
        await self._publish({"op": "remove", "url": url})

    async def _publish(self, change: dict[str, Any]) -> None:
        """Tell the other replicas; a Redis failure is logged (the change stands here)."""
        change["origin"] = self.origin
        try:
            await self._redis.publish(self._channel, json.dumps(change))
        except Exception as exc:
            log.warning("shared fleet: could not publish %s: %s", change, exc)

    async def _listen(self, pubsub: Any) -> None:
        backoff = 0.5
        while True:
            try:
                async for message in pubsub.listen():
                    backoff = 0.5
                    if message.get("type") != "message":
                        continue
                    await self._apply(json.loads(message["data"]))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                log.warning("shared fleet: %s; subscribing again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX, backoff * 2)
                with contextlib.suppress(Exception):
                    await pubsub.subscribe(self._channel)

    async def _apply(self, change: dict[str, Any]) -> None:
        if change.get("origin") == self.origin:
            return
        try:
            if change.get("op") == "add":
                await self._sink.discovered(
                    change["url"], change.get("role", "regular"), change.get("bootstrap_port")
                )
            elif change.get("op") == "remove":
                await self._sink.lost(change["url"])
        except Exception:
            log.exception("shared fleet: applying %s failed", change)
