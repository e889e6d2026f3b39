"""The floor of any Python gateway: what one uvloop process spends per streamed request when it
does nothing but move bytes, one engine message in and one prebuilt SSE frame out per token.

    python -m bench.relay_floor [-c 32 64] [--duration 20] [--compare bench/results/RUN]

Three processes on loopback, as in bench/run.sh: a step engine (every 10 ms + 0.02 ms per
running request it emits one ~30-byte message per running stream, all streams' messages in one
write, like a real engine's step loop), the relay under test, and bench.load (the same client,
workload and measurements as the standard scenario). The relay parses the HTTP/1.1 request head,
sends the engine a 9-byte start, and for every engine message writes one constant chunked SSE
frame to that stream's client: no JSON, no protobuf, no HTTP/2, no tokenizer, no detokenizer.
Whatever a real gateway does per token costs more than this, so the relay's CPU per request is a
lower bound for herdsman's on the standard workload (`--compare` sets it beside a run's rows).
Run it in the loopback-only namespace, as run.sh does:

    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python -m bench.relay_floor'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import uvloop

_START = b"S"
_HEADER = 4  # big-endian message length
_MESSAGE = 25  # id (4) + token index (4) + done flag (1) + 16 bytes: a streamed chunk's size
_PROMPT_MS = 50.0  # prefill of the standard workload's ~2.4k-token prompts (5 ms + 20 ms/1k)
_ITL_MS = 10.0
_ITL_PER_RUNNING_MS = 0.02


class _Connection(asyncio.Protocol):
    """A protocol that keeps its transport."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass


# ---- the step engine ---------------------------------------------------------------------------


class _EngineConnection(_Connection):
    def __init__(self, engine: StepEngine) -> None:
        self._engine = engine
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while len(buffer) >= 9:
            stream, tokens = int.from_bytes(buffer[1:5], "big"), int.from_bytes(buffer[5:9], "big")
            self._engine.start(self, stream, tokens)
            buffer = buffer[9:]
        self._buffer = buffer


class StepEngine:
    """Advances every running stream by one token per step and writes each connection's
    messages of a step at once."""

    def __init__(self) -> None:
        # stream id -> [connection, tokens left, next index, first-token time]
        self._running: dict[int, list[Any]] = {}
        self._wake = asyncio.Event()

    def start(self, connection: _EngineConnection, stream: int, tokens: int) -> None:
        first = time.monotonic() + _PROMPT_MS / 1000
        self._running[stream] = [connection, tokens, 0, first]
        self._wake.set()

    async def loop(self) -> None:
        pad = bytes(16)
        while True:
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
            step = (_ITL_MS + _ITL_PER_RUNNING_MS * len(self._running)) / 1000
            await asyncio.sleep(step)
            now = time.monotonic()
            out: dict[_EngineConnection, list[bytes]] = {}
            for stream, state in list(self._running.items()):
                connection, left, index, first = state
                if now < first:
                    continue
                left -= 1
                done = left == 0
                out.setdefault(connection, []).append(
                    _MESSAGE.to_bytes(4, "big")
                    + stream.to_bytes(4, "big")
                    + index.to_bytes(4, "big")
                    + (b"\x01" if done else b"\x00")
                    + pad
                )
                if done:
                    del self._running[stream]
                else:
                    state[1], state[2] = left, index + 1
            for connection, messages in out.items():
                if connection.transport is not None and not connection.transport.is_closing():
                    connection.transport.write(b"".join(messages))


async def _serve_engine() -> None:
    engine = StepEngine()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _EngineConnection(engine), "127.0.0.1", 0)
    _announce(server)
    await engine.loop()


# ---- the relay ---------------------------------------------------------------------------------


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_OPEN = b'data: {"id":"chatcmpl-floor","object":"chat.completion.chunk","created":0,"model":"qwen3"'
_TOKEN = _chunk(
    _OPEN + b',"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)
_ROLE = _chunk(
    _OPEN + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)


def _tail(tokens: int) -> bytes:
    return (
        _chunk(
            _OPEN + b',"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,'
            b'"finish_reason":"length","stop_reason":null}]}\n\n'
        )
        + _chunk(
            _OPEN + b',"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":%d,'
            b'"total_tokens":%d}}\n\n' % (tokens, tokens)
        )
        + _chunk(b"data: [DONE]\n\n")
        + b"0\r\n\r\n"
    )


class _Upstream(_Connection):
    """The relay's one engine connection: splits messages and hands each to its client."""

    def __init__(self, clients: dict[int, _Client]) -> None:
        self._clients = clients
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        clients = self._clients
        while size - offset >= _HEADER + _MESSAGE:
            body = offset + _HEADER
            client = clients.get(int.from_bytes(buffer[body : body + 4], "big"))
            if client is not None:
                client.token(buffer[body + 8] == 1)
            offset = body + _MESSAGE
        self._buffer = buffer[offset:]


class _Client(_Connection):
    """One keep-alive HTTP/1.1 client connection: a request head and body in, a stream out."""

    next_id = 0

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._buffer = b""
        self._stream = -1
        self._tokens = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.clients.pop(self._stream, None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            return
        length = 0
        for line in buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buffer) < end + 4 + length:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 4 + length :]
        _Client.next_id += 1
        self._stream, self._tokens = _Client.next_id, self._relay.max_tokens
        self._relay.clients[self._stream] = self
        assert self.transport is not None
        self.transport.write(_HEAD + _ROLE)
        self._relay.start(self._stream)

    def token(self, done: bool) -> None:
        assert self.transport is not None
        if done:
            self.transport.write(_tail(self._tokens))
            del self._relay.clients[self._stream]
        else:
            self.transport.write(_TOKEN)


class Relay:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.clients: dict[int, _Client] = {}
        self.upstream: _Upstream | None = None

    def start(self, stream: int) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(
            _START + stream.to_bytes(4, "big") + self.max_tokens.to_bytes(4, "big")
        )


async def _serve_relay(engine_port: int, max_tokens: int) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(max_tokens)
    _, relay.upstream = await loop.create_connection(
        lambda: _Upstream(relay.clients), "127.0.0.1", engine_port
    )
    server = await loop.create_server(lambda: _Client(relay), "127.0.0.1", 0)
    _announce(server)
    await asyncio.Event().wait()


# ---- the run -----------------------------------------------------------------------------------


def _announce(server: asyncio.AbstractServer) -> None:
    """The listening port, on the line the parent waits for (see _spawn)."""
    print(server.sockets[0].getsockname()[1], flush=True)


def _spawn(role: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a role and wait for the port it listens on (its first line out; EOF: it died)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_floor", role, *extra], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"relay_floor: the {role} did not start")
    return process, int(line)


def _measure(concurrency: int, duration: float, max_tokens: int, out: Path) -> dict[str, Any]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        engine, engine_port = _spawn("engine")
        started.append(engine)
        relay, port = _spawn(
            "relay", "--engine-port", str(engine_port), "--max-tokens", str(max_tokens)
        )
        started.append(relay)
        subprocess.run(
            [sys.executable, "-m", "bench.load", "--url", f"http://127.0.0.1:{port}",
             "--label", "python-relay", "--concurrency", str(concurrency),
             "--duration", str(duration), "--warmup", "3", "--max-tokens", str(max_tokens),
             "--gateway-pid", str(relay.pid), "--engine-pid", str(engine.pid),
             "--json-out", str(out)],
            check=True,
        )  # fmt: skip
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(10)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _compared(run: Path | None, concurrency: int) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for target in ("herdsman-w1", "smg"):
        path = run / f"standard-c{concurrency}-{target}.json" if run else None
        if path is not None and path.exists():
            rows.append((target, json.loads(path.read_text())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_floor", description=__doc__)
    parser.add_argument("role", nargs="?", choices=("run", "engine", "relay"), default="run")
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--compare", type=Path, help="a bench/results run to set beside")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results/relay-floor"))
    parser.add_argument("--engine-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "engine":
        uvloop.run(_serve_engine())
        return 0
    if args.role == "relay":
        uvloop.run(_serve_relay(args.engine_port, args.max_tokens))
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "| c | gateway | CPU ms/request | of which kernel | CPU µs/token | req/s | TTFT p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency in args.concurrency:
        floor = _measure(
            concurrency, args.duration, args.max_tokens, args.out_dir / f"c{concurrency}.json"
        )
        for name, result in [("python relay floor", floor), *_compared(args.compare, concurrency)]:
            gateway = result["gateway"]
            per_request = gateway["cpu_ms_per_req"]
            kernel = gateway.get("kernel_ms_per_req")
            lines.append(
                f"| {concurrency} | {name} | {per_request:.2f} | "
                f"{'–' if kernel is None else f'{kernel:.2f}'} | "
                f"{per_request * 1000 / result['tokens_per_request']:.1f} | "
                f"{result['req_per_s']:.1f} | "
                f"{result['ttft_ms']['p50']:.1f} |"
            )
    print("\n".join(lines))
    print(f"relay_floor: raw results in {args.out_dir} (pid {os.getpid()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
