"""HTTP/1.1 connections: parsing, keep-alive, chunked streaming, back-pressure, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from herdsman.http.messages import Handler, Request, Response, StreamingResponse

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_ERROR_BODY = b'{"error":{"message":"%s","type":"%s","param":null,"code":%d}}'


@dataclass(slots=True, frozen=True)
class ServerLimits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 16 * 1024
    # Open connections per server; more are answered 503 and closed.
    max_connections: int = 4096
    # Requests parsed ahead of the one being answered, per connection; beyond: reading pauses.
    max_pipelined: int = 16
    # A request's line and headers must arrive within header_timeout of its first byte (or of
    # the connection's start), its body within body_timeout of the headers.
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0


def _head(status: int, content_type: str, extra: list[tuple[str, str]], *, close: bool) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n"
        % (status, _REASONS.get(status, b""), content_type.encode())
    ]
    for name, value in extra:
        lines.append(b"%s: %s\r\n" % (name.encode(), value.encode()))
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One client connection. Requests on it are served one after another, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[Request | None, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._reset_message()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed alike.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle_timer()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._cancel_idle_timer()
        if self._task is not None and not self._task.done():
            # The client is gone: cancelling the handler is what lets it abort engine work.
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------
    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._limits.max_header_bytes:
            raise httptools.HttpParserError("headers too large")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            self._too_large = True
        elif self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._too_large = True
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode(),
            path=parsed.path.decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            headers=self._headers,
            body=b"".join(self._body),
            received_at=time.perf_counter(),
        )
        # An oversized body is answered (413) in order, after the requests before it.
        self._pending.append(
            (None if self._too_large else request, self._parser.should_keep_alive())
        )
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_pending())

    # -- serving -------------------------------------------------------------------------------
    async def _serve_pending(self) -> None:
        try:
            while self._pending and not self._closed:
                request, keep_alive = self._pending.popleft()
                self._server.in_flight += 1
                try:
                    keep_alive = await self._serve(request, keep_alive) and keep_alive
                finally:
                    self._server.in_flight -= 1
                if not keep_alive or self._server.draining:
                    self._close()
                    return
        finally:
            self._task = None
        self._arm_idle_timer()

    async def _serve(self, request: Request | None, keep_alive: bool) -> bool:
        """Write one response; False when the connection cannot be reused afterwards."""
        if request is None:
            limit = self._limits.max_body_bytes
            self._write_error(413, f"request body exceeds {limit} bytes", keep_alive=False)
            return False
        try:
            response = await self._server.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            self._write_error(500, "internal server error", keep_alive=keep_alive)
            return keep_alive
        close = not keep_alive or self._server.draining
        if isinstance(response, Response):
            self._write(
                _head(response.status, response.content_type, response.headers, close=close)
                + b"content-length: %d\r\n\r\n" % len(response.body)
                + response.body
            )
            return True
        return await self._stream(response, close=close)

    async def _stream(self, response: StreamingResponse, *, close: bool) -> bool:
        chunks = response.chunks
        try:
            head = _head(response.status, response.content_type, response.headers, close=close)
            self._write(head + b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            async for chunk in chunks:
                if self._closed:
                    return False
                if chunk:
                    self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    if self._writable is not None and not self._writable.done():
                        await self._writable
        except asyncio.CancelledError:
            raise
        except Exception:
            # Headers are gone already: the only honest signal left is an unterminated body.
            log.exception("streaming response failed")
            self._close()
            return False
        finally:
            try:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if response.on_close is not None:
                    response.on_close()
        self._write(b"0\r\n\r\n")
        return True

    def _write(self, data: bytes) -> None:
        if not self._closed and self._transport is not None:
            self._transport.write(data)

    def _write_error(self, status: int, message: str, *, keep_alive: bool) -> None:
        kind = b"invalid_request_error" if status < 500 else b"server_error"
        body = _ERROR_BODY % (message.replace('"', "'").encode(), kind, status)
        head = _head(status, "application/json", [], close=not keep_alive)
        self._write(head + b"content-length: %d\r\n\r\n" % len(body) + body)

    def _reject(self, status: int, message: str) -> None:
        self._write_error(status, message, keep_alive=False)
        self._close()

    def _close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    def close_if_idle(self) -> None:
        if self._task is None:
            self._close()

    def _arm_idle_timer(self) -> None:
        if self._closed:
            return
        self._cancel_idle_timer()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._limits.keepalive_timeout, self.close_if_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        access_log: bool = False,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.ssl = ssl
        self.access_log = access_log
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), sock=sock, backlog=4096, ssl=self.ssl
        )

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let in-flight responses finish until ``deadline`` seconds, then close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while self.in_flight and loop.time() < end:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection._close()


def bind_socket(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(4096)
    sock.setblocking(False)
    return sock
