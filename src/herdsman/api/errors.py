"""OpenAI-style errors: one exception type carrying the HTTP status and the error body, and the
mapping of the pipeline's failures to it."""

from __future__ import annotations

import math

import msgspec

from herdsman.http import Response
from herdsman.pipeline.errors import (
    EngineFailed,
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    NoWorkerAvailable,
    Overloaded,
    RequestError,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code if self.code is not None else self.status,
            }
        }

    def response(self) -> Response:
        return Response(self.status, msgspec.json.encode(self.body()), headers=self.headers)

    def sse_event(self) -> bytes:
        return b"data: " + msgspec.json.encode(self.body()) + b"\n\n"


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


_STATUS: dict[type[RequestError], int] = {
    InvalidRequest: 400,
    ModelNotFound: 404,
    Overloaded: 429,
    NoWorkerAvailable: 503,
    EngineFailed: 502,
    EngineTimeout: 504,
}


def api_error(exc: RequestError) -> APIError:
    """The HTTP error a pipeline failure becomes."""
    status = next((s for kind, s in _STATUS.items() if isinstance(exc, kind)), 500)
    headers = []
    if isinstance(exc, Overloaded):
        headers.append(("retry-after", str(max(1, math.ceil(exc.retry_after)))))
    return APIError(status, exc.message, param=exc.param, code=exc.code, headers=headers)
