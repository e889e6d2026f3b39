"""A minimal HTTP/2 client connection for gRPC calls (RFC 9113, gRPC over HTTP/2).

Only what a gRPC client needs: one connection, many concurrent streams, flow control both ways,
SETTINGS/PING/GOAWAY handling, and length-prefixed gRPC messages in DATA frames. Everything on the
per-message path is a few slices and a deque append; HPACK decoding (``hpack``) happens only for
the two header blocks of each call.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import cast
from urllib.parse import unquote

import grpc
import hpack

from herdsman.engines.transport.base import RpcError

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
CANCEL_CODE = 0x8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_RECEIVE_WINDOW = 1 << 30  # large windows: engines stream to us as fast as they like
_WINDOW_REFILL = 1 << 28
_HEADER = struct.Struct(">I")  # 24-bit length + type read as one int, then flags and stream id

_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}
# HTTP/2 error codes a server uses to refuse or reset a stream, as gRPC maps them.
_RST_STATUS = {
    0x7: grpc.StatusCode.UNAVAILABLE,  # REFUSED_STREAM: not processed, safe to retry
    0x8: grpc.StatusCode.CANCELLED,
    0xB: grpc.StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
}


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int) -> bytes:
    if value < 127:
        return bytes((value,))
    out = bytearray((127,))
    value -= 127
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_header_block(headers: list[tuple[str, str]]) -> bytes:
    """HPACK literals without indexing: stateless, so a block can be built once and reused."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v
    return bytes(out)


class Http2Stream:
    """One call's receiving side: gRPC messages queue here until the caller reads them."""

    __slots__ = (
        "_buffer",
        "_waiter",
        "closed",
        "error",
        "headers_seen",
        "id",
        "messages",
        "send_window",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.messages: deque[bytes] = deque()
        self.closed = False
        self.error: RpcError | None = None
        self.headers_seen = False
        self.send_window = send_window
        self.unacked = 0
        self._buffer = b""
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        while size - offset >= 5:
            length = int.from_bytes(buffer[offset + 1 : offset + 5], "big")
            end = offset + 5 + length
            if end > size:
                break
            if buffer[offset]:
                self.fail(RpcError(grpc.StatusCode.INTERNAL, "compressed messages unsupported"))
                return
            self.messages.append(buffer[offset + 5 : end])
            offset = end
        self._buffer = buffer[offset:] if offset < size else b""
        self._wake()

    def finish(self, error: RpcError | None) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
            self._wake()

    def fail(self, error: RpcError) -> None:
        self.finish(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes | None:
        """The next message; None when the call ended OK; raises RpcError otherwise."""
        while not self.messages:
            if self.closed:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.messages.popleft()


class Http2Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._decoder = hpack.Decoder()
        self._streams: dict[int, Http2Stream] = {}
        self._next_id = 1
        self._buffer = b""
        self._peer_initial_window = 65535
        self._peer_max_frame = 16384
        self._send_window = 65535
        self._window_opened = asyncio.Event()
        self._received_unacked = 0
        self._header_fragments: tuple[int, int, bytearray] | None = None
        self.usable = True
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- lifecycle -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        settings = struct.pack(">HIHIHI", 0x2, 0, 0x4, _RECEIVE_WINDOW - 1, 0x5, 1 << 20)
        self._transport.write(
            PREFACE
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, (_RECEIVE_WINDOW - 65535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        error = RpcError(grpc.StatusCode.UNAVAILABLE, f"connection to engine lost: {exc or 'EOF'}")
        for stream in list(self._streams.values()):
            stream.fail(error)
        self._streams.clear()
        self._window_opened.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    # -- calls ---------------------------------------------------------------------------------
    async def start_call(self, header_block: bytes, message: bytes) -> Http2Stream:
        if not self.usable or self._transport is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "connection to engine is not usable")
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id >= 1 << 31:
            self.usable = False  # ids exhausted: new calls go to a fresh connection
        stream = Http2Stream(stream_id, self._peer_initial_window)
        self._streams[stream_id] = stream
        body = len(message).to_bytes(5, "big") + message  # flag byte 0: not compressed
        self._transport.write(_frame(HEADERS, END_HEADERS, stream_id, header_block))
        await self._send_data(stream, body)
        return stream

    async def _send_data(self, stream: Http2Stream, body: bytes) -> None:
        assert self._transport is not None
        view = memoryview(body)
        while True:
            allowed = min(len(view), self._peer_max_frame, self._send_window, stream.send_window)
            if allowed == len(view):
                self._send_window -= allowed
                stream.send_window -= allowed
                self._transport.write(_frame(DATA, END_STREAM, stream.id, bytes(view)))
                return
            if allowed > 0:
                self._send_window -= allowed
                stream.send_window -= allowed
                self._transport.write(_frame(DATA, 0, stream.id, bytes(view[:allowed])))
                view = view[allowed:]
                continue
            if stream.closed:
                return
            self._window_opened.clear()
            await self._window_opened.wait()

    def cancel(self, stream: Http2Stream) -> None:
        if self._streams.pop(stream.id, None) is not None and self._transport is not None:
            self._transport.write(_frame(RST_STREAM, 0, stream.id, CANCEL_CODE.to_bytes(4, "big")))
        stream.finish(RpcError(grpc.StatusCode.CANCELLED, "cancelled by the gateway"))

    # -- receiving -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        while size - offset >= 9:
            head = _HEADER.unpack_from(buffer, offset)[0]
            length, kind = head >> 8, head & 0xFF
            end = offset + 9 + length
            if end > size:
                break
            flags = buffer[offset + 4]
            stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = buffer[offset + 9 : end]
            offset = end
            if kind == DATA:
                self._on_data(stream_id, flags, payload, length)
            else:
                self._on_control(kind, flags, stream_id, payload)
        self._buffer = buffer[offset:] if offset < size else b""

    def _on_data(self, stream_id: int, flags: int, payload: bytes, length: int) -> None:
        self._received_unacked += length
        if self._received_unacked >= _WINDOW_REFILL:
            self._write_window_update(0, self._received_unacked)
            self._received_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.unacked += length
        if stream.unacked >= _WINDOW_REFILL:
            self._write_window_update(stream_id, stream.unacked)
            stream.unacked = 0
        if payload:
            stream.feed(payload)
        if flags & END_STREAM:
            self._end(stream, RpcError(grpc.StatusCode.INTERNAL, "stream ended without status"))

    def _on_control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind in (HEADERS, CONTINUATION):
            self._on_headers(kind, flags, stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._apply_settings(payload)
                self._write(_frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window += increment
            elif (stream := self._streams.get(stream_id)) is not None:
                stream.send_window += increment
            self._window_opened.set()
        elif kind == RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                code = int.from_bytes(payload[:4], "big")
                status = _RST_STATUS.get(code, grpc.StatusCode.INTERNAL)
                stream.fail(RpcError(status, f"engine reset the stream (HTTP/2 error {code})"))
        elif kind == GOAWAY:
            self.usable = False
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for sid in [s for s in self._streams if s > last]:
                self._streams.pop(sid).fail(
                    RpcError(grpc.StatusCode.UNAVAILABLE, "engine is going away")
                )

    def _apply_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                self._window_opened.set()
            elif key == 0x5:
                self._peer_max_frame = value

    def _on_headers(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PADDED:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            if flags & PRIORITY:
                payload = payload[5:]
            self._header_fragments = (stream_id, flags, bytearray(payload))
        elif self._header_fragments is not None:
            self._header_fragments[2].extend(payload)
        if not flags & END_HEADERS or self._header_fragments is None:
            return
        sid, first_flags, block = self._header_fragments
        self._header_fragments = None
        # Decoded even for unknown streams: the HPACK dynamic table is per connection.
        headers = self._decoder.decode(bytes(block), raw=True)
        stream = self._streams.get(sid)
        if stream is None:
            return
        if not stream.headers_seen:
            stream.headers_seen = True
            status = next((v for k, v in headers if k == b":status"), b"200")
            if status != b"200":
                self._end(stream, RpcError(_http_status(int(status)), f"HTTP status {status!r}"))
                return
        if first_flags & END_STREAM:
            self._end(stream, _status_from(headers))

    def _end(self, stream: Http2Stream, error: RpcError | None) -> None:
        self._streams.pop(stream.id, None)
        stream.finish(error)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _write_window_update(self, stream_id: int, increment: int) -> None:
        self._write(_frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big")))


def _status_from(headers: list[tuple[bytes, bytes]]) -> RpcError | None:
    code, message = None, ""
    for name, value in headers:
        if name == b"grpc-status":
            code = int(value)
        elif name == b"grpc-message":
            message = unquote(value.decode("utf-8", "replace"))
    if code is None:
        return RpcError(grpc.StatusCode.UNKNOWN, "call ended without grpc-status")
    if code == 0:
        return None
    return RpcError(_STATUS_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN), message)


def _http_status(status: int) -> grpc.StatusCode:
    # The mapping gRPC defines for HTTP statuses that are not 200.
    return {
        400: grpc.StatusCode.INTERNAL,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.UNIMPLEMENTED,
        429: grpc.StatusCode.UNAVAILABLE,
        502: grpc.StatusCode.UNAVAILABLE,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.UNAVAILABLE,
    }.get(status, grpc.StatusCode.UNKNOWN)
