"""Closed-loop load client for an OpenAI-compatible gateway: streaming chat completions.

    python -m bench.load --url http://127.0.0.1:8000 -c 32 --duration 20 --gateway-pid PID

The client shares two cores with the gateway it measures, so it is a minimal HTTP/1.1 client
over asyncio streams (uvloop): one keep-alive connection per slot, chunked transfer decoding and
SSE line splitting on bytes, and one msgspec decode per event into a struct holding only the
fields it looks at. It prints one JSON result line on stdout and a human line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec

from bench.runner import Outcome, add_common_arguments, main_with
from bench.workload import Turn

READ_SIZE = 65536


class Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class Choice(msgspec.Struct):
    delta: Delta | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = -1
    completion_tokens: int = -1


class Chunk(msgspec.Struct):
    choices: list[Choice] = []
    usage: Usage | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(Chunk).decode
_encode = msgspec.json.Encoder().encode


class ChunkedDecoder:
    """Incremental decoder of HTTP/1.1 chunked transfer coding."""

    __slots__ = ("_buf", "_crlf", "_left", "_trailer", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0
        self._crlf = 0
        self._trailer = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._crlf = 2
            elif self._crlf:
                take = min(self._crlf, end - pos)
                pos += take
                self._crlf -= take
            else:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                line = buf[pos:nl]
                pos = nl + 2
                if self._trailer:
                    # The empty line after the last chunk (and any trailers) ends the body.
                    self.done = not line
                    continue
                size = int(line.split(b";", 1)[0], 16)
                if size == 0:
                    self._trailer = True
                else:
                    self._left = size
        self._buf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)


class SseReader:
    """Splits an event stream into lines and folds each data line into the request's Outcome."""

    __slots__ = ("_buf", "_event", "_last", "_started", "done", "outcome", "usage_seen")

    def __init__(self, outcome: Outcome, started: float) -> None:
        self._buf = b""
        self._event = b""
        self._started = started
        self._last = 0.0
        self.outcome = outcome
        self.done = False
        self.usage_seen = False

    def feed(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl]
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                self._data(line[5:].lstrip(b" "), now)
            elif not line:
                self._event = b""
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
        self._buf = buf[pos:]

    def _data(self, payload: bytes, now: float) -> None:
        outcome = self.outcome
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = _decode_chunk(payload)
        except msgspec.DecodeError as exc:
            outcome.fail(f"undecodable SSE data ({exc}): {payload[:200]!r}")
            return
        if self._event == b"error" or chunk.error is not None:
            outcome.fail(f"SSE error event: {payload[:300].decode('utf-8', 'replace')}")
            return
        for choice in chunk.choices:
            delta = choice.delta
            if delta is None:
                continue
            text = delta.content
            if not text and delta.reasoning_content:
                # Counted for timing all the same; the report flags any.
                text = delta.reasoning_content
                outcome.reasoning_chunks += 1
            if not text:
                continue
            if outcome.chunks:
                outcome.gaps.append(now - self._last)
            else:
                outcome.ttft = now - self._started
            self._last = now
            outcome.chunks += 1
        usage = chunk.usage
        if usage is not None:
            self.usage_seen = True
            outcome.tokens = usage.completion_tokens
            outcome.prompt_tokens_reported = usage.prompt_tokens


class HttpDriver:
    kind = "http"
    needs_ids = False

    def __init__(self, url: str, model: str, max_tokens: int, extra: dict[str, Any]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = (parts.path.rstrip("/") or "") + "/v1/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.extra = extra
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: "
        ).encode()
        self._conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def _connect(self, slot: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_SIZE * 4)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns[slot] = (reader, writer)
        return reader, writer

    def _drop(self, slot: int) -> None:
        conn = self._conns.pop(slot, None)
        if conn is not None:
            conn[1].close()

    def body(self, turn: Turn) -> bytes:
        return _encode(
            {
                "model": self.model,
                "messages": turn.messages,
                "max_tokens": self.max_tokens,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
                **self.extra,
            }
        )

    async def request(self, slot: int, turn: Turn) -> Outcome:
        body = self.body(turn)
        conn = self._conns.get(slot)
        if conn is None:
            conn = await self._connect(slot)
        reader, writer = conn
        keep = False
        try:
            started = time.perf_counter()
            writer.write(self._head + b"%d\r\n\r\n" % len(body) + body)
            outcome, keep = await self._response(reader, started)
            return outcome
        finally:
            # Also reached on cancellation and timeout: a half-read connection is unusable.
            if not keep:
                self._drop(slot)

    async def _response(self, reader: asyncio.StreamReader, started: float) -> tuple[Outcome, bool]:
        outcome = Outcome()
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            data = await reader.read(READ_SIZE)
            if not data:
                return outcome.fail("connection closed before the response head"), False
            buf += data
        head = buf[:end].decode("latin-1").split("\r\n")
        rest = buf[end + 4 :]
        status_parts = head[0].split(" ", 2)
        status = int(status_parts[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        chunked = "chunked" in headers.get("transfer-encoding", "")
        length = int(headers["content-length"]) if "content-length" in headers else None
        keep = headers.get("connection") != "close" and (chunked or length is not None)

        sse = SseReader(outcome, started)
        decoder = ChunkedDecoder() if chunked else None
        body_error = b""
        received = 0
        data = rest
        while True:
            if data:
                now = time.perf_counter()
                received += len(data)
                payload = decoder.feed(data) if decoder is not None else data
                if status == 200:
                    sse.feed(payload, now)
                elif len(body_error) < 500:
                    body_error += payload
            if decoder is not None:
                if decoder.done:
                    break
            elif length is not None and received >= length:
                break
            data = await reader.read(READ_SIZE)
            if not data:
                if decoder is None and length is None:
                    break  # close-delimited body
                return outcome.fail("connection closed mid-response"), False
        if status != 200:
            text = body_error[:300].decode("utf-8", "replace")
            return outcome.fail(f"HTTP {status}: {text}"), keep
        if not sse.done and outcome.ok:
            outcome.fail("stream ended without data: [DONE]")
        if not sse.usage_seen:
            # No usage block: fall back to counting chunks.
            outcome.tokens = outcome.chunks
        return outcome, keep

    async def close(self) -> None:
        for slot in list(self._conns):
            self._drop(slot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True, help="gateway base URL, http://HOST:PORT")
    parser.add_argument("--model", default="qwen3")
    parser.add_argument(
        "--extra-body",
        default='{"separate_reasoning": false}',
        help="JSON merged into every request body",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    extra = json.loads(args.extra_body)
    result = main_with(
        args, lambda config: HttpDriver(args.url, args.model, config.max_tokens, extra)
    )
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
