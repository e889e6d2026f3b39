"""Requests and responses as the handlers see them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float = 0.0  # time.perf_counter() when the whole request had arrived


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class BodyWriter(Protocol):
    """Writes chunks of a streamed body straight to the client, in the iterator's stead: valid
    only while the server waits on the body's iterator for its next chunk, and only while
    ``body_ready()`` (the client is there and the server is not waiting for it to read)."""

    def body_ready(self) -> bool: ...

    def write_body(self, chunk: bytes) -> None: ...


@dataclass(slots=True)
class StreamingResponse:
    """A body written as it is produced, with chunked transfer encoding."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Called once when the server is done with the body, however it ended (written, client gone,
    # failed), even if it never started: what the handler holds for the stream is released here.
    on_close: Callable[[], None] | None = None
    # Called once the headers are written, with a writer the handler may use while the server
    # waits on ``chunks`` (a chunk written so must be one ``chunks`` would have yielded next).
    on_start: Callable[[BodyWriter], None] | None = None


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
