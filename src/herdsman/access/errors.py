"""The gate's own answers (401, 403, 429): OpenAI's error shape, Anthropic's on /v1/messages."""

from __future__ import annotations

from herdsman.api.errors import APIError
from herdsman.api.messages.errors import error_type
from herdsman.api.messages.stream import error_body
from herdsman.api.sse import encode_json
from herdsman.http import Response

# OpenAI's codes for the gate's statuses.
_CODES = {401: "invalid_api_key", 403: "insufficient_permissions", 429: "rate_limit_exceeded"}
_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_response(
    path: str, status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    extra = list(headers or [])
    if status == 401:
        extra.append(("www-authenticate", "Bearer"))
    if is_anthropic(path.rstrip("/")):
        body = error_body(error_type(status), message)
        return Response(status, encode_json(body), headers=extra)
    error = APIError(status, message, code=_CODES.get(status), type=_TYPES.get(status))
    error.headers = extra
    return error.response()
