"""The HTTP server on a real loopback socket, its event loop in a thread, with a tiny handler.

Tests talk to it with plain blocking sockets, so every byte on the wire is theirs to choose, and
read the server's state through ``ServerThread.call`` (run on the server's loop).

(No ``__init__.py`` here: a package named ``http`` on the test path would shadow the standard
library's.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import ssl as ssl_module
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import uvloop

from herdsman.http import (
    BodyWriter,
    HttpServer,
    Request,
    Response,
    ServerLimits,
    StreamingResponse,
)
from herdsman.http.server import bind_socket

T = TypeVar("T")
DEADLINE = 15.0  # generous: a condition that holds at all holds long before this


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class App:
    """Routes: /echo (any method), /stream (held until released; /stream?push hands its body
    writer to ``writers``), /fail-stream, /id."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.stream_started = threading.Event()
        self.stream_cancelled = threading.Event()
        self.on_close_calls: list[str] = []
        self.served: list[str] = []
        self.writers: list[BodyWriter] = []

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        self.served.append(f"{request.method} {request.path}?{request.query}")
        if request.path == "/stream":
            return self._stream(request)
        if request.path == "/fail-stream":
            return StreamingResponse(self._failing(), on_close=self._closed("fail-stream"))
        headers = [("x-request-id", "req-42")] if request.path == "/id" else []
        body = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body_bytes": len(request.body),
        }
        return Response(200, json.dumps(body).encode(), headers=headers)

    def _closed(self, name: str) -> Callable[[], None]:
        return lambda: self.on_close_calls.append(name)

    def _stream(self, request: Request) -> StreamingResponse:
        if self.release is None:
            self.release = asyncio.Event()
        release = self.release

        async def chunks() -> AsyncIterator[bytes]:
            try:
                self.stream_started.set()
                yield b"data: first\n\n"
                await release.wait()
                yield b"data: last\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                self.stream_cancelled.set()
                raise

        on_start = self.writers.append if request.query == "push" else None
        return StreamingResponse(
            chunks(), on_close=self._closed(request.query or "stream"), on_start=on_start
        )

    async def _failing(self) -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        raise RuntimeError("the stream broke")


class ServerThread:
    def __init__(
        self,
        limits: ServerLimits,
        *,
        ssl: ssl_module.SSLContext | None = None,
        access_log: bool = False,
    ) -> None:
        self.app = App()
        self.loop = uvloop.new_event_loop()
        self.sock = bind_socket("127.0.0.1", 0)
        self.port: int = self.sock.getsockname()[1]
        self.server = HttpServer(self.app, limits, ssl=ssl, access_log=access_log)
        self._thread = threading.Thread(target=self._run, daemon=True)
        started = concurrent.futures.Future[None]()
        self._started = started
        self._thread.start()
        started.result(DEADLINE)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start(self.sock))
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        self.loop.run_forever()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop and return its result."""
        future = concurrent.futures.Future[T]()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(DEADLINE)

    def release_streams(self) -> None:
        def release() -> None:
            if self.app.release is None:
                self.app.release = asyncio.Event()
            self.app.release.set()

        self.call(release)

    def connections(self) -> int:
        return self.call(lambda: len(self.server.connections))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.drain(0), self.loop).result(DEADLINE)

        async def settle() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(settle(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """A blocking socket speaking HTTP/1.1 byte by byte as the test says."""

    def __init__(
        self, port: int, *, tls: ssl_module.SSLContext | None = None, timeout: float = DEADLINE
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.buf = b""
        self.seen = b""  # everything received, in order

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data
        self.seen += data

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        part, self.buf = self.buf.split(marker, 1)
        return part + marker

    def _exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        part, self.buf = self.buf[:size], self.buf[size:]
        return part

    def reply(self) -> Reply:
        head = self.read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if status == 100:
            return Reply(status, headers, b"", head)
        if "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
            return Reply(status, headers, body, head + body)
        body = b""
        raw = head
        while True:
            size_line = self.read_until(b"\r\n")
            size = int(size_line.strip(), 16)
            data = self._exact(size + 2)
            raw += size_line + data
            if size == 0:
                return Reply(status, headers, body, raw)
            body += data[:-2]

    def closed(self) -> str:
        """Wait until the server ends the connection: 'eof' (clean) or 'reset'."""
        try:
            while True:
                self._fill()
        except EOFError:
            return "eof"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close abruptly: an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def request(method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
    length = ""
    if (body or method == "POST") and "content-length" not in headers:
        length = f"content-length: {len(body)}\r\n"
    return f"{method} {target} HTTP/1.1\r\nhost: t\r\n{headers}{length}\r\n".encode() + body
