"""A TCP fault proxy for tests: loopback only, switchable at run time between

- ``pass_through()``: forward both ways;
- ``stall()``: stop forwarding both ways and stop reading, sockets left open: a frozen or
  half-open peer (the kernel buffers fill, then the senders block);
- ``reset()``: RST every open connection on both sides (SO_LINGER 0), and every new one;
- ``slow(bytes_per_second)``: forward each direction at about that rate;
- ``refuse()``: stop listening, so new connections are refused (open ones carry on).

It runs an asyncio loop in a background thread, so a synchronous test or a whole gateway
process (pointed at ``proxy.address``) can sit in front of it; every switch is in force when
the call returns. Usage::

    with FaultProxy(("127.0.0.1", sim.port)) as proxy:
        client = connect(proxy.address)
        proxy.stall()
        ...
        proxy.pass_through()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "stall", "reset", "slow", "refuse"]
T = TypeVar("T")

_CHUNK = 65536
_CALL_TIMEOUT_S = 10.0


class _Pair:
    """One proxied connection: the client's side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.close()


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self._upstream = upstream
        self._host = host
        self._port = port
        self._mode: Mode = "pass"
        self._rate = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._changed: asyncio.Future[None] | None = None
        # Connections accepted so far (reset ones included); bytes forwarded each way.
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0

    # -- control (any thread) ------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def pass_through(self) -> None:
        self._call(self._switch("pass"))

    def stall(self) -> None:
        self._call(self._switch("stall"))

    def reset(self) -> None:
        self._call(self._switch("reset"))

    def slow(self, bytes_per_second: int) -> None:
        self._call(self._switch("slow", bytes_per_second))

    def refuse(self) -> None:
        self._call(self._switch("refuse"))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_TIMEOUT_S)

    # -- the proxy loop ------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _switch(self, mode: Mode, rate: int = 0) -> None:
        previous, self._mode, self._rate = self._mode, mode, rate
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and previous == "refuse":
            await self._listen()
        if mode == "reset":
            for pair in list(self._pairs):
                pair.reset()
            self._pairs.clear()
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pair in list(self._pairs):
            for task in pair.tasks:
                task.cancel()
            pair.close()
        self._pairs.clear()

    async def _flowing(self) -> None:
        """Return once the mode lets bytes through (waits out a stall)."""
        while self._mode == "stall":
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        if self._mode == "reset":
            pair.reset()
            return
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.ensure_future(self._pump(pair, reader, up_writer, upstream=True)),
            asyncio.ensure_future(self._pump(pair, up_reader, writer, upstream=False)),
        ]

    async def _pump(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while True:
                await self._flowing()
                slow = self._rate if self._mode == "slow" else 0
                data = await reader.read(max(1, min(_CHUNK, slow // 20)) if slow else _CHUNK)
                if not data:
                    break
                await self._flowing()  # a chunk read just before a stall waits it out too
                if self._mode == "slow" and self._rate:
                    await asyncio.sleep(len(data) / self._rate)
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended (or failed): end the other, unless a reset already did.
            if pair in self._pairs:
                self._pairs.discard(pair)
                pair.close()
                for task in pair.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
