"""Transport over herdsman's own HTTP/2 client (see http2.py), about 3x cheaper per message
than grpcio's asyncio stack, whose poller thread hands every event to the loop through a socket.

A transport keeps a small pool of connections to its engine: a call goes to the first connection
with a free stream slot (the engine's SETTINGS_MAX_CONCURRENT_STREAMS), another connection is
opened only when all are full, and past ``max_connections`` calls wait for a slot (within their
deadline). A connection that stops taking calls (GOAWAY, failed keepalive) leaves the pool;
it closes when its last call ends.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from herdsman.engines.transport.base import (
    Listener,
    Metadata,
    RpcError,
    StatusCode,
    TransportOptions,
)
from herdsman.engines.transport.frames import grpc_timeout, literal_header_block
from herdsman.engines.transport.http2 import Http2Connection
from herdsman.engines.transport.keepalive import Keepalive, KeepalivePolicy
from herdsman.engines.transport.stream import STREAM_WINDOW, Http2Stream, Unprocessed
from herdsman.engines.transport.tls import client_ssl_context

# Waits before each attempt of a call the engine did not process (at most ~0.1 s in all).
_UNPROCESSED_RETRY_DELAYS = (0.0, 0.005, 0.02, 0.08)

_Opened = tuple[Http2Connection, Http2Stream, asyncio.TimerHandle | None, bytes | None]


class NativeTransport:
    name = "native"
    # Connections to one engine; more than one only when the engine limits streams per
    # connection and they are all in use.
    max_connections = 4
    stream_window = STREAM_WINDOW

    def __init__(self, target: str, options: TransportOptions | None = None) -> None:
        self._options = options = options or TransportOptions()
        self._target = target
        host, _, port = target.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._ssl: ssl.SSLContext | None = client_ssl_context(options) if options.tls else None
        self._scheme = "https" if options.tls else "http"
        self.keepalive = KeepalivePolicy(options.keepalive_interval, options.keepalive_timeout)
        self._connections: list[Http2Connection] = []
        self._connecting: asyncio.Future[Http2Connection] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._headers: dict[str, bytes] = {}
        self._closed = False
        self.connections_opened = 0

    @property
    def connections(self) -> list[Http2Connection]:
        return list(self._connections)

    def _header_block(
        self, method: str, timeout: float | None, metadata: Metadata | None = None
    ) -> bytes:
        block = self._headers.get(method)
        if block is None:
            block = self._headers[method] = literal_header_block(
                [
                    (":method", "POST"),
                    (":scheme", self._scheme),
                    (":path", method),
                    (":authority", self._target),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    ("user-agent", "herdsman"),
                ]
            )
        if metadata:  # custom metadata (a trace context): rare, so not cached
            block += literal_header_block(list(metadata))
        if timeout is None:
            return block
        return block + literal_header_block([("grpc-timeout", grpc_timeout(timeout))])

    # -- the pool ------------------------------------------------------------------------------
    async def _acquire(self) -> Http2Connection:
        """A connection with a free stream slot; returns without suspending once it has one,
        so the caller's start_call takes that slot before anyone else can."""
        while True:
            usable = 0
            for connection in self._connections:
                if connection.usable:
                    if connection.has_slot():
                        return connection
                    usable += 1
            if self._closed:
                raise RpcError(StatusCode.UNAVAILABLE, "transport is closed")
            if self._connecting is None and usable < self.max_connections:
                self._connecting = asyncio.ensure_future(self._connect())
                self._connecting.add_done_callback(self._connect_done)
            if self._connecting is not None:
                await asyncio.shield(self._connecting)
                continue
            await self._wait_for_slot()

    def _connect_done(self, future: asyncio.Future[Http2Connection]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved here; every waiter re-raises it

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # our wake-up must not be lost with us
            raise
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _changed(self, slot_only: bool) -> None:
        if self._waiters:
            if slot_only:
                self._wake_one()
            else:
                self._wake_all()

    async def _connect(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        made: list[Http2Connection] = []

        def factory() -> Http2Connection:
            connection = Http2Connection(
                max_message=self._options.max_message_bytes,
                keepalive=Keepalive(self.keepalive),
                on_change=self._changed,
                stream_window=self.stream_window,
            )
            made.append(connection)
            return connection

        try:
            # Connected means the engine's SETTINGS arrived: a TCP accept alone proves nothing
            # (the kernel accepts for a frozen process too).
            async with asyncio.timeout(self._options.connect_timeout):
                await loop.create_connection(
                    factory,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
                await made[0].ready
        except (OSError, TimeoutError, RpcError) as exc:
            for connection in made:
                connection.fail(RpcError(StatusCode.UNAVAILABLE, "connect failed"))
            reason = (
                f"timed out after {self._options.connect_timeout:g}s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            raise RpcError(
                StatusCode.UNAVAILABLE, f"cannot connect to {self._target}: {reason}"
            ) from exc
        connection = made[0]
        if self._closed:
            connection.close()
            raise RpcError(StatusCode.UNAVAILABLE, "transport is closed")
        self._connections.append(connection)
        self.connections_opened += 1
        connection.closed.add_done_callback(lambda _: self._forget(connection))
        return connection

    def _forget(self, connection: Http2Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    # -- calls ---------------------------------------------------------------------------------
    async def _open(
        self, method: str, request: Any, timeout: float | None, metadata: Metadata | None = None
    ) -> _Opened:
        """Start a call and read its first message (None: it ended OK without one).

        The deadline covers everything: waiting for a connection or a slot, sending, then one
        timer for the rest of the call. A call the engine did not process (GOAWAY, or
        REFUSED_STREAM) is retried a few times, soon, as grpc does transparently, because both
        happen in benign races: a GOAWAY crossing a new call, and a grpc core server that still
        counts a stream whose trailers we already have against its MAX_CONCURRENT_STREAMS (seen
        in tests, for grpc's own client too). Refused every time, the caller gets
        ``refused=True``: back-pressure.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        message = request.SerializeToString()
        for attempt, delay in enumerate(_UNPROCESSED_RETRY_DELAYS):
            try:
                async with asyncio.timeout_at(deadline):
                    if delay:
                        await asyncio.sleep(delay)
                    connection = await self._acquire()
                    remaining = None if deadline is None else deadline - loop.time()
                    stream = await connection.start_call(
                        self._header_block(method, remaining, metadata), message
                    )
            except TimeoutError as exc:
                raise RpcError(
                    StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started"
                ) from exc
            handle = None if deadline is None else loop.call_at(deadline, connection.expire, stream)
            try:
                first = await stream.read()
            except Unprocessed:
                if handle is not None:
                    handle.cancel()
                if attempt == len(_UNPROCESSED_RETRY_DELAYS) - 1:
                    raise
                continue
            except BaseException:
                if handle is not None:
                    handle.cancel()
                if not stream.closed:
                    connection.cancel(stream)
                raise
            return connection, stream, handle, first
        raise AssertionError("unreachable")

    async def unary(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float,
        metadata: Metadata | None = None,
    ) -> Any:
        connection, stream, handle, data = await self._open(method, request, timeout, metadata)
        try:
            if data is None:
                raise RpcError(StatusCode.INTERNAL, "no response message")
            while await stream.read() is not None:  # wait for the status trailers
                pass
            return response_type.FromString(data)
        finally:
            if handle is not None:
                handle.cancel()
            if not stream.closed:
                connection.cancel(stream)

    async def stream(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        listener: Listener | None = None,
    ) -> AsyncGenerator[Any, None]:
        connection, stream, handle, data = await self._open(method, request, timeout, metadata)
        parse = response_type.FromString
        # Offered the messages after the first while this generator waits (Http2Stream).
        stream.listener = listener
        try:
            while data is not None:
                yield parse(data)
                data = await stream.read()
        finally:
            stream.listener = None
            if handle is not None:
                handle.cancel()
            if not stream.closed:
                connection.cancel(stream)

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        self._wake_all()
