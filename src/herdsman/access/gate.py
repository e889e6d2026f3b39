"""The access gate: a wrapper around the gateway's HTTP app that answers CORS preflights,
checks API keys and applies per-key limits before a request reaches its endpoint.

Routes, as the gate sees them:

- open: ``/health``, ``/liveness``, ``/readiness`` (probes), and ``/metrics`` unless
  ``--metrics-api-key`` is set (then only that key reads it);
- admin: ``/workers`` and below (the fleet). With ``--admin-api-key``, only that key passes
  there (401 without a key or with an unknown one, 403 with a client key); without it, they
  follow the client rule;
- every other path (unknown ones too): with client keys configured, one of them is needed
  (401 otherwise), and its limits apply.

Errors are OpenAI-shaped, Anthropic-shaped on ``/v1/messages`` (and below).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from herdsman.access.cors import Cors, parse_origins
from herdsman.access.errors import error_response
from herdsman.access.keys import ApiKey, KeyLimits, KeyRing, load_keys, matches, presented_key
from herdsman.access.limits import BoardLimiter, Lease, Limiter
from herdsman.access.usage import set_meter
from herdsman.config import GatewayConfig
from herdsman.http import Handler, Request, Response, StreamingResponse

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/liveness", "/readiness"})
METRICS_PATH = "/metrics"
ADMIN_PREFIX = "/workers"
LIMITS_FILE = "access-limits.board"


def is_admin(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class AccessGate:
    def __init__(
        self,
        app: Handler,
        keys: KeyRing,
        *,
        admin_key: str | None = None,
        metrics_key: str | None = None,
        limiter: Limiter | None = None,
        cors: Cors | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.admin_key = admin_key or None
        self.metrics_key = metrics_key or None
        self.limiter = limiter
        self.cors = cors

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        cors = self.cors
        if cors is None:
            return await self._guarded(request)
        if cors.is_preflight(request.method, request.headers):
            return cors.preflight(request.headers)
        response = await self._guarded(request)
        cors.decorate(response, request.headers.get("origin"))
        return response

    async def _guarded(self, request: Request) -> Response | StreamingResponse:
        path = request.path.rstrip("/") or "/"
        if path in OPEN_PATHS:
            return await self.app(request)
        presented = presented_key(request.headers)
        if path == METRICS_PATH:
            if self.metrics_key is None or matches(presented, self.metrics_key):
                return await self.app(request)
            return self._unauthorized(request, presented)
        if is_admin(path) and self.admin_key is not None:
            if matches(presented, self.admin_key):
                return await self.app(request)
            if self.keys.find(presented) is not None:
                return error_response(
                    request.path, 403, "this API key may not manage the fleet; use the admin key"
                )
            return self._unauthorized(request, presented)
        if not len(self.keys):
            return await self.app(request)
        key = self.keys.find(presented)
        if key is None:
            return self._unauthorized(request, presented)
        if self.limiter is None or not key.limits.limited:
            set_meter(None)
            return await self.app(request)
        return await self._limited(request, key, self.limiter)

    async def _limited(
        self, request: Request, key: ApiKey, limiter: Limiter
    ) -> Response | StreamingResponse:
        decision, lease = await limiter.admit(key)
        if lease is None:
            return error_response(
                request.path,
                429,
                f"rate limit of API key {key.name!r} reached ({_describe(decision.limit, key)}); "
                f"try again in {decision.retry_after_header}s",
                headers=[("retry-after", decision.retry_after_header)],
            )
        set_meter(lease.charge if key.limits.tokens_per_minute else None)
        try:
            response = await self.app(request)
        except BaseException:
            set_meter(None)
            lease.release()
            raise
        if isinstance(response, StreamingResponse):
            response.on_close = _chain(response.on_close, lease)
        else:
            set_meter(None)
            lease.release()
        return response

    @staticmethod
    def _unauthorized(request: Request, presented: str | None) -> Response:
        message = (
            "missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            if presented is None
            else "invalid API key"
        )
        return error_response(request.path, 401, message)


def _describe(limit: str, key: ApiKey) -> str:
    limits = key.limits
    if limit == "requests":
        return f"{limits.requests_per_minute} requests per minute"
    if limit == "tokens":
        return f"{limits.tokens_per_minute} tokens per minute"
    return f"{limits.max_concurrent} concurrent requests"


def _chain(on_close: Callable[[], None] | None, lease: Lease) -> Callable[[], None]:
    """The stream's own close callback, then the lease's release (tokens were charged by then:
    the generation reports its completion when the stream's body ends)."""

    def close() -> None:
        try:
            if on_close is not None:
                on_close()
        finally:
            set_meter(None)
            lease.release()

    return close


def _limiter(config: GatewayConfig, keys: KeyRing, slot: int) -> Limiter | None:
    if not any(key.limits.limited for key in keys.keys):
        return None
    if config.state_url:
        from herdsman.access.redis_limits import RedisLimiter

        return RedisLimiter(config.state_url)
    shared = Path(config.admission_board).parent if config.admission_board else None
    path = shared / LIMITS_FILE if shared is not None else None
    return BoardLimiter(keys.keys, path, config.processes, slot)


def protect(app: Handler, config: GatewayConfig, slot: int = 0) -> Handler:
    """``app`` behind the access gate, or ``app`` itself when nothing is configured."""
    defaults = KeyLimits(config.rate_limit_rpm, config.rate_limit_tpm, config.rate_limit_concurrent)
    keys = load_keys(config.api_keys, config.api_keys_file, defaults)
    origins = parse_origins(config.cors_allowed_origins)
    if not (len(keys) or config.admin_api_key or config.metrics_api_key or origins):
        return app
    if len(keys):
        names = ", ".join(key.name for key in keys.keys)
        log.info("API keys required: %d configured (%s)", len(keys), names)
    return AccessGate(
        app,
        keys,
        admin_key=config.admin_api_key,
        metrics_key=config.metrics_api_key,
        limiter=_limiter(config, keys, slot),
        cors=Cors(origins) if origins else None,
    )
