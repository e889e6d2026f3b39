"""Anthropic-shaped errors: ``{"type": "error", "error": {"type", "message"}}`` with its statuses.

The pipeline says what failed (``herdsman.pipeline.errors``) and chat's mapping makes OpenAI
errors of it; the Messages endpoints answer every failure here instead, before the app's
dispatcher would shape it the OpenAI way. Anthropic's clients retry on 429, 5xx and 529, and
Claude Code tells "overloaded" (529) apart from a rate limit (429), so the split matters:

- a limit this gateway was configured with (its admission queue, the prompt tokens in flight)
  is a rate limit: 429 ``rate_limit_error``;
- engines at capacity, or none able to take the request now, is 529 ``overloaded_error``;
- an engine failure is 500 ``api_error``, a deadline 504 ``timeout_error``.
"""

from __future__ import annotations

import logging
import math

from herdsman.api.errors import APIError
from herdsman.api.messages.stream import error_body
from herdsman.api.sse import encode_json
from herdsman.http import Request, Response
from herdsman.observability import METRICS
from herdsman.pipeline.errors import (
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    NoWorkerAvailable,
    Overloaded,
    RequestError,
)

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _status(exc: RequestError | APIError) -> int:
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, InvalidRequest):
        return 400
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(exc, Overloaded):
        return 529 if exc.code == "engine_overloaded" else 429
    if isinstance(exc, NoWorkerAvailable):
        return 529
    if isinstance(exc, EngineTimeout):
        return 504
    return 500  # EngineFailed, and anything the pipeline adds later


def error_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_response(exc: RequestError | APIError, request: Request) -> Response:
    """The client's answer to a failure before any of the response went out."""
    status = _status(exc)
    headers = list(exc.headers) if isinstance(exc, APIError) else []
    if isinstance(exc, Overloaded):
        METRICS.rejected.inc(labels=(exc.code or "overloaded",))
        headers.append(("retry-after", str(max(1, math.ceil(exc.retry_after)))))
    if status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.path, status, exc)
    body = error_body(error_type(status), exc.message)
    return Response(status, encode_json(body), headers=headers)


def stream_error_type(exc: RequestError | APIError) -> str:
    """The ``error`` event's type for a failure once the stream started."""
    return error_type(_status(exc))
