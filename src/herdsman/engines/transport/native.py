"""Transport over herdsman's own HTTP/2 client (see http2.py), about 3x cheaper per message
than grpcio's asyncio stack, whose poller thread hands every event to the loop through a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc

from herdsman.engines.transport.base import RpcError, TransportOptions
from herdsman.engines.transport.http2 import Http2Connection, Http2Stream, literal_header_block


class NativeTransport:
    name = "native"

    def __init__(self, target: str, options: TransportOptions | None = None) -> None:
        self._options = options or TransportOptions()
        self._target = target
        host, _, port = target.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._connection: Http2Connection | None = None
        self._connecting: asyncio.Future[Http2Connection] | None = None
        self._headers: dict[tuple[str, float | None], bytes] = {}

    def _header_block(self, method: str, timeout: float | None) -> bytes:
        key = (method, timeout)
        block = self._headers.get(key)
        if block is None:
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", self._target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "herdsman"),
            ]
            if timeout is not None:
                headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
            block = self._headers[key] = literal_header_block(headers)
        return block

    async def _get_connection(self) -> Http2Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(Http2Connection, self._host, self._port), timeout=10
            )
        except (OSError, TimeoutError) as exc:
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self._target}: {exc}"
            ) from exc
        old, self._connection = self._connection, connection
        if old is not None and old.active_streams == 0:
            old.close()
        return connection

    async def _start(
        self, method: str, request: Any, timeout: float | None
    ) -> tuple[Http2Connection, Http2Stream]:
        connection = await self._get_connection()
        message = request.SerializeToString()
        return connection, await connection.start_call(self._header_block(method, timeout), message)

    async def unary(self, method: str, request: Any, response_type: Any, timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout):
                connection, stream = await self._start(method, request, timeout)
                try:
                    data = await stream.read()
                    if data is None:
                        raise RpcError(grpc.StatusCode.INTERNAL, "no response message")
                    while await stream.read() is not None:  # wait for the status trailers
                        pass
                    return response_type.FromString(data)
                finally:
                    if not stream.closed:
                        connection.cancel(stream)
        except TimeoutError as exc:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from exc

    async def stream(
        self, method: str, request: Any, response_type: Any, timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        connection, stream = await self._start(method, request, timeout)
        parse = response_type.FromString
        try:
            while (data := await stream.read()) is not None:
                yield parse(data)
        finally:
            if not stream.closed:
                connection.cancel(stream)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
