"""Per-key limits shared by every replica through Redis (``--state-url redis://...``).

The same GCRA state as ``BoardLimiter`` (see ``herdsman.access.limits``), under the prefix
(``herdsman:limits:`` unless ``?prefix=`` says otherwise), per key name:

- ``{NAME}:req``, ``{NAME}:tok``: the TATs (seconds, Redis server time), expiring once the
  bucket is full again;
- ``{NAME}:conc``: a sorted set of the requests in flight, each a lease scored by its expiry.
  The process holding a lease renews it every ``RENEW_SECONDS``; the lease of a process or
  replica that died expires after ``LEASE_SECONDS`` and stops counting.

Each admission is one Lua script (reading Redis's own clock, so replicas' clocks do not
matter): it decides and takes the request and concurrency units atomically, or takes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from herdsman.access.keys import ApiKey
from herdsman.access.limits import ALLOWED, PERIOD, Decision, Lease

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "herdsman:limits:"
LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0

# KEYS: req TAT, tok TAT, concurrency zset.
# ARGV: rpm, tpm, max concurrent, lease id, lease seconds, period.
# Returns {allowed 0|1, limit, retry_after (a string: Lua numbers become integers)}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local period = tonumber(ARGV[6])
local wait, limit = 0, ''
local req_tat = now
if rpm > 0 then
  req_tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  local w = req_tat + period / rpm - period - now
  if w > wait then wait, limit = w, 'requests' end
end
if tpm > 0 then
  local tok_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local w = tok_tat + period / tpm - period - now
  if w > wait then wait, limit = w, 'tokens' end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc and wait < 1 then wait, limit = 1, 'concurrency' end
end
if limit ~= '' then return {0, limit, tostring(wait)} end
if rpm > 0 then
  local tat = req_tat + period / rpm
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[5]) * 1000) + 1000)
end
return {1, '', '0'}
"""

# KEYS: tok TAT. ARGV: tpm, tokens, period.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, period = tonumber(ARGV[1]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
tat = tat + tonumber(ARGV[2]) * period / tpm
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return 1
"""

# KEYS: concurrency zset. ARGV: lease seconds, lease id, lease id, ...
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
return 1
"""


# Query options of the URL passed on to redis-py; herdsman's own (``prefix``, ...) are not.
_REDIS_OPTIONS = frozenset(
    {"db", "username", "password", "socket_timeout", "ssl_cert_reqs", "ssl_ca_certs"}
)


def parse_state_url(url: str) -> tuple[str, str]:
    """The Redis URL with only redis-py's options, and the limits' key prefix (``?prefix=P``
    gives ``Plimits:``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--state-url must be redis://, rediss:// or unix://, not {url!r}")
    query = parse_qsl(parts.query)
    prefix = next((v + "limits:" for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k in _REDIS_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), prefix


class _RedisLease:
    __slots__ = ("_id", "_key", "_limiter", "_released")

    def __init__(self, limiter: RedisLimiter, key: ApiKey, lease_id: str | None) -> None:
        self._limiter = limiter
        self._key = key
        self._id = lease_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self._id is not None:
                self._limiter.release(self._key, self._id)

    def charge(self, tokens: int) -> None:
        self._limiter.charge(self._key, tokens)


class RedisLimiter:
    def __init__(self, url: str) -> None:
        address, self._prefix = parse_state_url(url)
        self._redis = aioredis.from_url(address, socket_connect_timeout=10.0)
        self._admit = self._redis.register_script(_ADMIT)
        self._charge = self._redis.register_script(_CHARGE)
        self._renew = self._redis.register_script(_RENEW)
        self._leases: dict[str, tuple[ApiKey, str]] = {}
        self._serial = 0
        self._tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    def _keys(self, key: ApiKey) -> list[str]:
        base = f"{self._prefix}{{{key.name}}}"  # a hash tag: one Cluster slot per key
        return [f"{base}:req", f"{base}:tok", f"{base}:conc"]

    async def admit(self, key: ApiKey) -> tuple[Decision, Lease | None]:
        limits = key.limits
        lease_id: str | None = None
        if limits.max_concurrent:
            self._serial += 1
            lease_id = f"{self._tag}-{self._serial}"
        try:
            allowed, limit, wait = await self._admit(
                keys=self._keys(key),
                args=[
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                    limits.max_concurrent,
                    lease_id or "",
                    LEASE_SECONDS,
                    PERIOD,
                ],
            )
        except RedisError as exc:
            # The limits cannot be checked: serve rather than fail every request.
            log.warning("rate limits unavailable (%s); admitting key %s", exc, key.name)
            return ALLOWED, _RedisLease(self, key, None)
        if not int(allowed):
            name = limit.decode() if isinstance(limit, bytes) else str(limit)
            return Decision(False, float(wait), name), None
        if lease_id is not None:
            self._leases[lease_id] = (key, lease_id)
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew_leases(), name="lease renewal")
        return ALLOWED, _RedisLease(self, key, lease_id)

    def release(self, key: ApiKey, lease_id: str) -> None:
        self._leases.pop(lease_id, None)
        self._spawn(self._redis.zrem(self._keys(key)[2], lease_id))

    def charge(self, key: ApiKey, tokens: int) -> None:
        if key.limits.tokens_per_minute and tokens > 0:
            self._spawn(
                self._charge(
                    keys=[self._keys(key)[1]],
                    args=[key.limits.tokens_per_minute, tokens, PERIOD],
                )
            )

    def _spawn(self, call: object) -> None:
        async def run() -> None:
            try:
                await call  # type: ignore[misc]
            except RedisError as exc:
                log.warning("rate limit update failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            by_key: dict[str, tuple[ApiKey, list[str]]] = {}
            for key, lease_id in list(self._leases.values()):
                by_key.setdefault(key.name, (key, []))[1].append(lease_id)
            for key, ids in by_key.values():
                try:
                    await self._renew(keys=[self._keys(key)[2]], args=[LEASE_SECONDS, *ids])
                except RedisError as exc:
                    log.warning("could not renew concurrency leases: %s", exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
