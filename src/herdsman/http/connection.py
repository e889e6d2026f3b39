"""One HTTP/1.1 client connection: parsing, limits, timeouts, ordered writes, streaming.

Everything written on a connection goes out in request order: responses, ``100 Continue`` and
the server's own error answers (400, 408, 413, 414, 431) are all written by one task that serves
the parsed requests one after another, so none of them can land in the middle of a response that
is still streaming.

Reading is paused while requests wait behind the one being answered (pipelining), never just
because a response is streaming: a client that goes away mid-stream must be noticed at once so
its handler is cancelled and the engine gets an Abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools

from herdsman.http.messages import Request, Response, StreamingResponse
from herdsman.http.wire import CONTINUE, error_response, head

if TYPE_CHECKING:
    from herdsman.http.server import HttpServer

log = logging.getLogger("herdsman.http")
ACCESS_LOG = logging.getLogger("herdsman.access")

# Where the parser is in the current request.
_IDLE, _HEAD, _BODY = 0, 1, 2
# What the connection still does with what it reads.
_READING, _REJECTED, _LINGERING = 0, 1, 2
# What the connection's one deadline is for.
_NO_DEADLINE, _KEEPALIVE, _HEADERS, _BODY_TIME, _LINGER = range(5)

_HEAD_END = b"\r\n\r\n"


class _Reject(Exception):
    """Raised from a parser callback: the request is answered with ``status`` and not read on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Failure:
    """An error answer waiting in the queue, in the place of the request it answers."""

    __slots__ = ("message", "method", "path", "status")

    def __init__(self, status: int, message: str, method: str, path: str) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class Connection(asyncio.Protocol):
    """One client connection. Requests on it are served one after another, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = "-"
        self._pending: deque[tuple[Request | _Failure, bool]] = deque()
        self._max_queue = max(1, limits.max_pipelined)
        self._task: asyncio.Task[None] | None = None
        self._responding = False
        self._sent = 0  # body bytes of the current streamed response, counted for the access log
        self._writable: asyncio.Future[None] | None = None
        self._stalled = False  # dropped for not reading: abort, do not close gracefully
        self._closed = False
        self._state = _READING
        self._phase = _IDLE
        # Bumped at every phase change: tells whether a whole read belonged to one phase.
        self._epoch = 0
        # Raw bytes read in the current phase, counted over reads that lay wholly inside it:
        # httptools buffers a header value until it ends, so this bounds what it can hold.
        self._raw = 0
        self._paused = False
        self._stash = b""  # read but not parsed yet: the queue had no room for more requests
        self._continue = False  # a 100 Continue owed once the responses before it are written
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._deadline_kind = _NO_DEADLINE
        self._reset_message()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed alike.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        if server.access_log:
            self._peer = _address(transport.get_extra_info("peername"))
        if len(server.connections) >= self._limits.max_connections:
            self._state = _REJECTED
            limit = self._limits.max_connections
            self._answer_failure(_Failure(503, f"more than {limit} open connections", "-", "-"))
            return
        server.connections.add(self)
        # The first request's line and headers are due within header_timeout of the start.
        self._set_deadline(self._limits.header_timeout, _HEADERS)

    def data_received(self, data: bytes) -> None:
        if self._state != _READING:
            return  # rejected: nothing after the bad request is parsed; lingering: dropped
        if self._paused:
            # A transport may hand over what it had already read when it was paused.
            self._stash += data
            return
        self._feed(data)
        if self._state == _READING and self._must_pause():
            self._pause()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            # The client is gone: cancelling the handler is what lets it abort engine work.
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- reading -------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        phase, epoch = self._phase, self._epoch
        try:
            # A request completes at the end of its header block or of its body, so a read with
            # k header ends completes at most k + 1 requests (one may have begun before it).
            if data.count(_HEAD_END) < self._max_queue - len(self._pending):
                self._parser.feed_data(data)
            else:
                self._feed_slices(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, _Reject):
                self._reject(reason.status, reason.message)
            else:
                log.error("HTTP parser callback failed", exc_info=reason)
                self._reject(400, "malformed HTTP request")
            return
        except httptools.HttpParserUpgrade:
            # The request is queued already and is answered as plain HTTP/1.1; what follows it
            # would be another protocol, so nothing more is read and the connection ends there.
            self._stop_reading()
            if self._pending:
                request, _ = self._pending[-1]
                self._pending[-1] = (request, False)
            return
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")
            return
        if self._phase == _IDLE:
            return
        if self._phase != phase or self._epoch != epoch:
            self._raw = 0
            return
        self._raw += len(data)
        limits = self._limits
        if self._phase == _HEAD and self._raw > limits.max_head_bytes:
            self._reject(431, f"request line and headers exceed {limits.max_head_bytes} bytes")
        elif self._phase == _BODY and self._raw > 2 * limits.max_body_bytes + limits.max_head_bytes:
            self._reject(413, f"request body exceeds {limits.max_body_bytes} bytes")

    def _feed_slices(self, data: bytes) -> None:
        """Feed only as many requests as the queue has room for; the rest waits in the stash."""
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size:
            room = self._max_queue - len(self._pending)
            if room <= 0 or self._state != _READING:
                self._stash = data[pos:]
                return
            end = pos
            for _ in range(max(room - 1, 1)):
                found = data.find(_HEAD_END, end)
                if found < 0:
                    end = size
                    break
                end = found + len(_HEAD_END)
            self._parser.feed_data(view[pos:end])
            pos = end

    def _must_pause(self) -> bool:
        # A request waits behind the one being answered (the task picks up a lone one at once).
        return bool(self._stash) or len(self._pending) > (0 if self._responding else 1)

    def _pause(self) -> None:
        transport = self._transport
        if not self._paused and transport is not None and not transport.is_closing():
            self._paused = True
            transport.pause_reading()
        self._clear_deadline()  # while the server does not read, the client is not late

    def _resume(self) -> None:
        """The queue drained: parse what was held back, then read again if there is room."""
        if not self._paused or self._state != _READING or self._closed:
            return
        if self._stash:
            stash, self._stash = self._stash, b""
            self._feed(stash)
            if self._state != _READING:
                return
            if self._must_pause():
                self._clear_deadline()
                return
        self._paused = False
        assert self._transport is not None
        self._transport.resume_reading()
        if self._phase == _HEAD:
            self._set_deadline(self._limits.header_timeout, _HEADERS)
        elif self._phase == _BODY and not self._continue:
            self._set_deadline(self._limits.body_timeout, _BODY_TIME)

    def _stop_reading(self) -> None:
        self._state = _REJECTED
        self._stash = b""
        self._continue = False
        self._pause()

    # -- httptools callbacks -------------------------------------------------------------------
    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_size = 0

    def on_message_begin(self) -> None:
        self._reset_message()
        self._phase = _HEAD
        self._epoch += 1
        # The connection's first request keeps the deadline counted from the connection's start.
        if self._deadline_kind != _HEADERS:
            self._set_deadline(self._limits.header_timeout, _HEADERS)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url_bytes:
            raise _Reject(414, f"request target exceeds {self._limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_bytes > limits.max_header_bytes:
            raise _Reject(431, f"request headers exceed {limits.max_header_bytes} bytes")
        if self._header_count > limits.max_headers:
            raise _Reject(431, f"more than {limits.max_headers} request headers")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._epoch += 1
        limits = self._limits
        headers = self._headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            # Answered before the body is sent (and instead of 100 Continue).
            raise _Reject(413, f"request body exceeds {limits.max_body_bytes} bytes")
        if headers.get("expect", "").lower() == "100-continue":
            if self._task is not None or self._pending:
                # Responses before this request are still being written: it waits its turn.
                self._continue = True
                self._clear_deadline()
                return
            self._write(CONTINUE)
        self._set_deadline(limits.body_timeout, _BODY_TIME)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise _Reject(413, f"request body exceeds {self._limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._epoch += 1
        self._continue = False  # the body came without waiting for it
        self._clear_deadline()
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Reject(400, "invalid request target") from None
        request = Request(
            method=self._parser.get_method().decode(),
            path=parsed.path.decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            headers=self._headers,
            body=b"".join(self._body),
            received_at=time.perf_counter(),
        )
        self._pending.append((request, self._parser.should_keep_alive()))
        if self._task is None:
            self._task = self._loop.create_task(self._serve_pending())

    # -- serving -------------------------------------------------------------------------------
    async def _serve_pending(self) -> None:
        server = self._server
        try:
            while self._pending and not self._closed:
                item, keep_alive = self._pending.popleft()
                if isinstance(item, _Failure):
                    self._answer_failure(item)
                    return
                self._responding = True
                if not self._pending:
                    self._resume()
                server.in_flight += 1
                try:
                    keep_alive = await self._serve(item, keep_alive) and keep_alive
                finally:
                    server.in_flight -= 1
                    self._responding = False
                if not keep_alive or server.draining:
                    self._close()
                    return
                # A client that pipelines and does not read its answers: no more of them pile
                # up in the write buffer until it reads.
                if (
                    self._writable is not None
                    and not self._writable.done()
                    and not await self._drained()
                ):
                    self._close()
                    return
        finally:
            self._task = None
            self._responding = False
        self._between_responses()

    def _between_responses(self) -> None:
        """Every queued request is answered: owe the client a 100 Continue, or wait for it."""
        if self._closed or self._state != _READING:
            return
        if self._continue:
            self._continue = False
            self._write(CONTINUE)
            self._set_deadline(self._limits.body_timeout, _BODY_TIME)
        elif self._phase == _IDLE:
            self._set_deadline(self._limits.keepalive_timeout, _KEEPALIVE)

    async def _serve(self, request: Request, keep_alive: bool) -> bool:
        """Write one response; False when the connection cannot be reused afterwards."""
        try:
            response = await self._server.handler(request)
        except asyncio.CancelledError:
            if self._server.access_log:
                self._log(request.method, request.path, 499, 0, request, None)
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            self._write(error_response(500, "internal server error", close=not keep_alive))
            if self._server.access_log:
                self._log(request.method, request.path, 500, 0, request, None)
            return keep_alive
        close = not keep_alive or self._server.draining
        if isinstance(response, Response):
            self._write(
                head(response.status, response.content_type, response.headers, close=close)
                + b"content-length: %d\r\n\r\n" % len(response.body)
                + response.body
            )
            if self._server.access_log:
                size = len(response.body)
                self._log(request.method, request.path, response.status, size, request, response)
            return True
        self._sent = 0
        try:
            return await self._stream(response, close=close)
        finally:
            if self._server.access_log:
                status = response.status
                self._log(request.method, request.path, status, self._sent, request, response)

    async def _stream(self, response: StreamingResponse, *, close: bool) -> bool:
        chunks = response.chunks
        writer: _BodyWriter | None = None
        try:
            head_ = head(response.status, response.content_type, response.headers, close=close)
            self._write(head_ + b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            body = self._counted(chunks) if self._server.access_log else chunks
            if response.on_start is not None:
                writer = _BodyWriter(self)
                response.on_start(writer)
            complete = await self._send(body)
            if not complete:
                return False
        except asyncio.CancelledError:
            raise
        except Exception:
            # Headers are gone already: the only honest signal left is an unterminated body.
            log.exception("streaming response failed")
            self._close()
            return False
        finally:
            if writer is not None:
                writer.live = False
            try:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if response.on_close is not None:
                    response.on_close()
        self._write(b"0\r\n\r\n")
        return True

    async def _send(self, chunks: AsyncIterator[bytes]) -> bool:
        """Write every chunk; False when the client went away first. The per-token path."""
        async for chunk in chunks:
            if self._closed:
                return False
            if chunk:
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if (
                    self._writable is not None
                    and not self._writable.done()
                    and not await self._drained()
                ):
                    return False
        return True

    def _ready_for_chunk(self) -> bool:
        """Not once writing is paused: the iterator's path then writes the chunk and waits,
        within the send timeout, for the client to read."""
        writable = self._writable
        return not self._closed and (writable is None or writable.done())

    def _write_chunk(self, chunk: bytes) -> None:
        """One chunk of a streamed body, as ``_send`` writes the iterator's."""
        if chunk:
            self._sent += len(chunk)
            self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body's chunks, their bytes counted for the access log (only when it is on: one
        more generator hop per chunk)."""
        async for chunk in chunks:
            self._sent += len(chunk)
            yield chunk

    async def _drained(self) -> bool:
        """Wait until the client takes what is buffered; False (connection dropped) when it takes
        nothing for ``send_timeout``. Only reached while writing is paused: the slow path."""
        assert self._writable is not None
        try:
            async with asyncio.timeout(self._limits.send_timeout):
                await asyncio.shield(self._writable)
        except TimeoutError:
            log.info("client took nothing for %gs; dropping it", self._limits.send_timeout)
            # Closed for writing now; the socket is dropped by _close once the response's
            # cleanup (aborting its engine request) has run: dropping it here would cancel that.
            self._closed = self._stalled = True
            self._cancel_timer()
            return False
        return not self._closed

    def _write(self, data: bytes) -> None:
        if not self._closed and self._transport is not None:
            self._transport.write(data)

    # -- errors and closing --------------------------------------------------------------------
    def _reject(self, status: int, message: str) -> None:
        """Answer an unusable request in its turn, then close; nothing after it is read."""
        if self._state != _READING or self._closed:
            return
        method, path = "-", "-"
        if self._url:
            method = self._parser.get_method().decode("latin-1", "replace")
            path = self._url[:200].decode("latin-1")
        self._stop_reading()
        self._pending.append((_Failure(status, message, method, path), False))
        if self._task is None:
            self._task = self._loop.create_task(self._serve_pending())

    def _answer_failure(self, failure: _Failure) -> None:
        self._write(error_response(failure.status, failure.message, close=True))
        if self._server.access_log:
            self._log(failure.method, failure.path, failure.status, 0, None, None)
        self._linger()

    def _linger(self) -> None:
        """Close once the client had time to read the answer.

        Closing a socket with unread input resets the connection, and a reset can destroy the
        answer before the client reads it. So: half-close, read and drop what the client still
        sends, and close when it closes its side or linger_timeout has passed.
        """
        transport = self._transport
        if self._closed or transport is None:
            return
        self._state = _LINGERING
        self._stash = b""
        if transport.can_write_eof():
            transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._set_deadline(self._limits.linger_timeout, _LINGER)

    def _close(self) -> None:
        if self._stalled and self._transport is not None:
            self._stalled = False
            self._transport.abort()  # it takes nothing: a graceful close would never flush
            return
        if not self._closed and self._transport is not None:
            self._closed = True
            self._cancel_timer()
            self._transport.close()

    def close_if_idle(self) -> None:
        if self._task is None:
            self._close()

    # -- the deadline --------------------------------------------------------------------------
    # One deadline at a time, with one timer that is moved lazily: pushing the deadline back
    # only records it (the timer, when it fires early, sets itself again), so a request costs
    # no timer churn beyond the rare call_at.
    def _set_deadline(self, seconds: float, kind: int) -> None:
        when = self._loop.time() + seconds
        self._deadline = when
        self._deadline_kind = kind
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _clear_deadline(self) -> None:
        self._deadline_kind = _NO_DEADLINE

    def _cancel_timer(self) -> None:
        self._deadline_kind = _NO_DEADLINE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind == _NO_DEADLINE or self._closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        self._deadline_kind = _NO_DEADLINE
        if kind == _KEEPALIVE:
            self.close_if_idle()
        elif kind == _LINGER:
            transport = self._transport
            if transport is not None and transport.get_write_buffer_size():
                # The client does not read its answer either: nothing left to wait for.
                self._closed = True
                transport.abort()
            else:
                self._close()
        elif self._phase == _IDLE:
            self.close_if_idle()  # connected and never sent a byte
        elif kind == _HEADERS:
            self._reject(408, "request line and headers not received in time")
        else:
            self._reject(408, "request body not received in time")

    # -- access log ----------------------------------------------------------------------------
    def _log(
        self,
        method: str,
        path: str,
        status: int,
        size: int,
        request: Request | None,
        response: Response | StreamingResponse | None,
    ) -> None:
        took = (time.perf_counter() - request.received_at) * 1000 if request else 0.0
        request_id = ""
        if response is not None:
            for name, value in response.headers:
                if name.lower() == "x-request-id":
                    request_id = f" id={value}"
        ACCESS_LOG.info(
            '%s "%s %s" %d %d %.1fms%s', self._peer, method, path, status, size, took, request_id
        )


class _BodyWriter:
    """The BodyWriter of one streamed body: dead once that body has ended, whoever still holds
    it, so nothing can write into the connection's next response."""

    __slots__ = ("_connection", "live")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.live = True

    def body_ready(self) -> bool:
        return self.live and self._connection._ready_for_chunk()

    def write_body(self, chunk: bytes) -> None:
        if self.live:
            self._connection._write_chunk(chunk)


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "-"
