"""The bytes the server writes itself: response heads and its own OpenAI-shaped error answers."""

from __future__ import annotations

from http import HTTPStatus

import msgspec

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# The API layer's error types for the statuses the server answers on its own.
_ERROR_TYPES = {503: "service_unavailable", 408: "timeout_error"}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def head(status: int, content_type: str, extra: list[tuple[str, str]], *, close: bool) -> bytes:
    """A response's status line and headers, without the framing header and final CRLF."""
    lines = [
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n"
        % (status, _REASONS.get(status, b""), content_type.encode())
    ]
    for name, value in extra:
        lines.append(b"%s: %s\r\n" % (name.encode(), value.encode()))
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join(lines)


def error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    error = {"message": message, "type": kind, "param": None, "code": status}
    return msgspec.json.encode({"error": error})


def error_response(status: int, message: str, *, close: bool) -> bytes:
    body = error_body(status, message)
    return (
        head(status, "application/json", [], close=close)
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
