"""What each HTTP server does with slow and hostile clients: herdsman's own server, uvicorn and
granian, the same application behind each (bench/asgi_gateway.py), each with its own protective
settings at values alike (5 s for request-reading timeouts, 256 connections or requests).

    python -m bench.http_robustness        # prints a table; run it inside a loopback namespace

Every probe opens fresh connections, misbehaves, and watches for WINDOW seconds whether the
server answers, closes, or keeps holding what the client took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "qwen3"
WINDOW = 15.0  # seconds a probe waits for the server to react (3x the configured timeouts)
IDLE_CONNECTIONS = 600
CAP = 256
SERVERS = ("herdsman", "uvicorn", "granian")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(argv: list[str], ready: bytes, env: dict[str, str] | None = None) -> subprocess.Popen:
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    buffer = b""
    while ready not in buffer:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{argv[:5]} did not start")
        buffer += os.read(process.stdout.fileno(), 65536)
    return process


async def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            if (await reader.read(12)).startswith(b"HTTP/1.1 200"):
                writer.close()
                return
            writer.close()
        await asyncio.sleep(0.5)
    raise RuntimeError("server not ready")


async def _reaction(port: int, payload: bytes, window: float = WINDOW) -> str:
    """Send ``payload`` and report what the server did within ``window``: its status line,
    'closed', or 'held open'."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(256), window)
        except TimeoutError:
            return "held open"
        except ConnectionError:
            return "reset"
        if not data:
            return "closed"
        match = re.match(rb"HTTP/1\.1 (\d{3})", data)
        return match.group(1).decode() if match else f"answered {data[:20]!r}"
    finally:
        writer.transport.abort()


async def probe_half_request_line(port: int) -> str:
    return await _reaction(port, b"POST /v1/chat/completions HT")


async def probe_headers_never_end(port: int) -> str:
    return await _reaction(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")


async def probe_body_never_comes(port: int) -> str:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    return await _reaction(port, head + b'content-length: 100\r\n\r\n{"model"')


async def probe_huge_url(port: int) -> str:
    return await _reaction(port, b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nhost: x\r\n\r\n")


async def probe_many_headers(port: int) -> str:
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 16) for i in range(20_000))
    return await _reaction(port, b"GET /health HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")


async def probe_giant_header(port: int) -> str:
    return await _reaction(
        port, b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * (4 << 20) + b"\r\n\r\n"
    )


async def probe_expect_continue_huge(port: int) -> str:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"expect: 100-continue\r\ncontent-length: 200000000\r\n\r\n"
    )
    return await _reaction(port, head, window=5.0)


async def probe_idle_connections(port: int) -> str:
    """Open many connections that send nothing; how many does the server still hold later?"""
    writers = []
    readers = []
    for _ in range(IDLE_CONNECTIONS):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            readers.append(reader)
            writers.append(writer)
    await asyncio.sleep(WINDOW)
    held = 0
    for reader in readers:
        try:
            await asyncio.wait_for(reader.read(1), 0.01)  # closed, or answered (a 503)
        except TimeoutError:
            held += 1  # nothing from the server: the connection is still taken
        except ConnectionError:
            pass
    for writer in writers:
        writer.transport.abort()
    return f"{held} of {len(writers)} held"


PROBES: dict[str, Callable[[int], Awaitable[str]]] = {
    "half a request line, then nothing": probe_half_request_line,
    "headers that never end": probe_headers_never_end,
    "a body that never comes (10 of 100 bytes)": probe_body_never_comes,
    "a 1 MiB URL": probe_huge_url,
    "20,000 headers (440 KB)": probe_many_headers,
    "one 4 MiB header": probe_giant_header,
    "Expect: 100-continue, Content-Length 200 MB": probe_expect_continue_huge,
    f"{IDLE_CONNECTIONS} connections that send nothing, {WINDOW:g} s later": probe_idle_connections,
}
# What a server that protects itself does: answer the request's fault, or close.
GOOD = {
    "half a request line, then nothing": "408 or closed",
    "headers that never end": "408 or closed",
    "a body that never comes (10 of 100 bytes)": "408 or closed",
    "a 1 MiB URL": "414 (or 4xx)",
    "20,000 headers (440 KB)": "431 (or 4xx)",
    "one 4 MiB header": "431 (or 4xx)",
    "Expect: 100-continue, Content-Length 200 MB": "413 at once",
}


async def run_server(server: str, engine_port: int) -> dict[str, str]:
    port = _free_port()
    serve = [
        "--worker", f"grpc://127.0.0.1:{engine_port}", "--model-path", str(MODEL),
        "--http-header-timeout", "5", "--http-body-timeout", "5",
        "--max-connections", str(CAP), "--max-body-bytes", str(32 << 20),
    ]  # fmt: skip
    argv = [sys.executable, "-m", "bench.asgi_gateway", "--server", server, "--port", str(port)]
    process = subprocess.Popen(
        [*argv, "--protective", "--", *serve],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        await _wait_ready(port)
        names = list(PROBES)
        results = await asyncio.gather(
            *(PROBES[name](port) for name in names), return_exceptions=True
        )
        out = {
            name: (f"error: {result!r}"[:60] if isinstance(result, BaseException) else result)
            for name, result in zip(names, results, strict=True)
        }
        out["still serving"] = "yes" if process.poll() is None else "no (exited)"
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def render(results: dict[str, dict[str, str]]) -> str:
    rows = [*PROBES, "still serving"]
    lines = [
        "| probe | a protective answer | " + " | ".join(results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for row in rows:
        cells = " | ".join(results[s].get(row, "") for s in results)
        lines.append(f"| {row} | {GOOD.get(row, '')} | {cells} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    engine_port = _free_port()
    engine = _start(
        [sys.executable, "-m", "herdsman.sim", "--model-path", str(MODEL), "--port",
         str(engine_port), "--ttft-base-ms", "1", "--itl-base-ms", "1"],
        b"engine-sim listening",
    )  # fmt: skip
    try:
        results = {}
        for server in args.servers.split(","):
            results[server] = await run_server(server, engine_port)
        print(render(results))
    finally:
        os.killpg(engine.pid, signal.SIGKILL)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_robustness", description=__doc__)
    parser.add_argument("--servers", default=",".join(SERVERS))
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
