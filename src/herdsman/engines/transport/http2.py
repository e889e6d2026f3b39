"""A minimal HTTP/2 client connection for gRPC calls (RFC 9113, gRPC over HTTP/2).

Only what a gRPC client needs: one connection, many concurrent streams, flow control both ways,
SETTINGS/PING/GOAWAY handling, keepalive, and length-prefixed gRPC messages in DATA frames.
Everything on the per-message path is a few slices and a deque append; HPACK decoding
(``hpack``) happens only for the two header blocks of each call. Timers are per connection
(keepalive) and per call (its deadline, armed by the caller), never per frame or message.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import cast

import hpack

from herdsman.engines.transport.base import RpcError, StatusCode
from herdsman.engines.transport.frames import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    REFUSED_STREAM,
    RST_STATUS,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    frame,
    http_status,
    status_from,
)
from herdsman.engines.transport.keepalive import Keepalive
from herdsman.engines.transport.stream import STREAM_WINDOW, Http2Stream, Unprocessed

log = logging.getLogger(__name__)

# The connection window is credited as bytes arrive: the per-stream windows already bound what
# is buffered, and crediting the connection on receipt keeps one stalled stream from blocking
# the others. It only needs to cover a round trip of the whole connection's traffic.
_CONNECTION_WINDOW = 64 * 1024 * 1024
_CONNECTION_REFILL = _CONNECTION_WINDOW // 4
_MAX_FRAME = 1 << 20
_UNLIMITED_STREAMS = 1 << 31
# Distinct header blocks remembered per connection (an engine sends a handful).
_HEADER_CACHE_BLOCKS = 64


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection to an engine.

    ``on_change(slot_only)`` tells the owner when a stream slot freed (``True``) or when the
    connection stopped taking calls or its stream limit changed (``False``).
    """

    def __init__(
        self,
        *,
        max_message: int,
        keepalive: Keepalive,
        on_change: Callable[[bool], None],
        stream_window: int = STREAM_WINDOW,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        # Frames written in one pass of the event loop, sent together by _flush: 64 calls
        # started at once (a batch of embeddings) go out in one send, not 64.
        self._outbox: list[bytes] = []
        self._decoder = hpack.Decoder()
        # Decoded header blocks by their bytes, valid while the HPACK dynamic table is unchanged:
        # an engine answers every call with the same few blocks (":status 200", "grpc-status 0"
        # as table references), and decoding them was ~60 us of Python per call.
        self._header_cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._table_changes = 0
        table = self._decoder.header_table
        add = table.add

        def counted_add(name: bytes, value: bytes) -> None:
            self._table_changes += 1
            add(name, value)

        table.add = counted_add  # type: ignore[method-assign]
        self._streams: dict[int, Http2Stream] = {}
        self._next_id = 1
        self._buffer = b""
        self._peer_initial_window = 65535
        self._peer_max_frame = 16384
        self._send_window = 65535
        self._window_opened = asyncio.Event()
        self._received_unacked = 0
        self._header_fragments: tuple[int, int, bytearray] | None = None
        self._max_message = max_message
        self._stream_window = stream_window
        self._on_change = on_change
        self._keepalive = keepalive
        keepalive.attach(self)
        # The engine's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says otherwise).
        self.max_streams = _UNLIMITED_STREAMS
        # False once the connection takes no new calls (GOAWAY, failure, ids exhausted).
        self.usable = True
        # Set whenever a frame other than a PING ACK arrives; the keepalive timer reads and
        # clears it.
        self.heard = False
        # Resolved when the engine's first SETTINGS arrives: the connection is then known to
        # speak HTTP/2 and its stream limit is known.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.peak_streams = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        settings = struct.pack(
            ">HIHIHI",
            SETTINGS_ENABLE_PUSH,
            0,
            SETTINGS_INITIAL_WINDOW_SIZE,
            self._stream_window,
            SETTINGS_MAX_FRAME_SIZE,
            _MAX_FRAME,
        )
        self._transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (_CONNECTION_WINDOW - 65535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._keepalive.stop()
        error = RpcError(StatusCode.UNAVAILABLE, f"connection to engine lost: {exc or 'EOF'}")
        for stream in list(self._streams.values()):
            stream.finish(error)
        self._streams.clear()
        self._window_opened.set()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be waiting any more
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_change(False)

    def close(self) -> None:
        self.usable = False
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def fail(self, error: RpcError) -> None:
        """Fail every call with ``error`` and drop the connection without waiting for the peer."""
        self.usable = False
        for stream in list(self._streams.values()):
            stream.finish(error)
        self._streams.clear()
        self._window_opened.set()
        if self._transport is not None:
            self._transport.abort()

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def streams(self) -> list[Http2Stream]:
        return list(self._streams.values())

    def has_slot(self) -> bool:
        return self.usable and len(self._streams) < self.max_streams

    # -- calls ---------------------------------------------------------------------------------
    async def start_call(self, header_block: bytes, message: bytes) -> Http2Stream:
        if not self.has_slot() or self._transport is None:
            raise RpcError(StatusCode.UNAVAILABLE, "connection to engine is not usable")
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id >= 1 << 31:
            self.usable = False  # ids exhausted: new calls go to a fresh connection
        stream = Http2Stream(
            self, stream_id, self._peer_initial_window, self._stream_window, self._max_message
        )
        streams = self._streams
        streams[stream_id] = stream
        if len(streams) > self.peak_streams:
            self.peak_streams = len(streams)
        if len(streams) == 1:
            self._keepalive.start()
        body = len(message).to_bytes(5, "big") + message  # flag byte 0: not compressed
        headers = frame(HEADERS, END_HEADERS, stream_id, header_block)
        size = len(body)
        if (
            size <= self._peer_max_frame
            and size <= self._send_window
            and size <= stream.send_window
        ):
            # The whole request in one write (one send, one packet): most calls are small.
            self._send_window -= size
            stream.send_window -= size
            self._write(headers + frame(DATA, END_STREAM, stream_id, body))
            return stream
        self._write(headers)
        try:
            await self._send_data(stream, body)
        except BaseException:
            self.cancel(stream)
            raise
        return stream

    async def _send_data(self, stream: Http2Stream, body: bytes) -> None:
        assert self._transport is not None
        view = memoryview(body)
        while True:
            if stream.closed or self._transport.is_closing():
                return
            allowed = min(len(view), self._peer_max_frame, self._send_window, stream.send_window)
            if allowed == len(view):
                self._send_window -= allowed
                stream.send_window -= allowed
                self._write(frame(DATA, END_STREAM, stream.id, bytes(view)))
                return
            if allowed > 0:
                self._send_window -= allowed
                stream.send_window -= allowed
                self._write(frame(DATA, 0, stream.id, bytes(view[:allowed])))
                view = view[allowed:]
                continue
            self._window_opened.clear()
            await self._window_opened.wait()

    def cancel(self, stream: Http2Stream) -> None:
        """The caller gave up on the call: RST_STREAM(CANCEL) so the engine stops it."""
        self.reset(stream, RpcError(StatusCode.CANCELLED, "cancelled by the gateway"))

    def expire(self, stream: Http2Stream) -> None:
        """The call's deadline passed: fail it now (dropping what it had not read yet)."""
        if stream.closed:
            return  # it ended in time; its caller still gets what it had not read
        stream.messages.clear()
        self.reset(stream, RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))

    def reset(self, stream: Http2Stream, error: RpcError, code: int = CANCEL) -> None:
        if self._streams.get(stream.id) is stream:
            self._write(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
            self._remove(stream)
        stream.finish(error)

    def send_credit(self, stream: Http2Stream, amount: int) -> None:
        self._write(frame(WINDOW_UPDATE, 0, stream.id, amount.to_bytes(4, "big")))

    def send_ping(self, payload: bytes) -> None:
        self._write(frame(PING, 0, 0, payload))

    def _remove(self, stream: Http2Stream) -> None:
        streams = self._streams
        if streams.pop(stream.id, None) is None:
            return
        if not streams:
            if not self.usable:
                self.close()  # drained after GOAWAY (or ids exhausted): nothing left to wait for
            self._keepalive.stop()
        self._on_change(True)

    # -- receiving -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        while size - offset >= 9:
            head = FRAME_HEADER.unpack_from(buffer, offset)[0]
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
        self.heard = True
        self._received_unacked += length
        if self._received_unacked >= _CONNECTION_REFILL:
            self._write(frame(WINDOW_UPDATE, 0, 0, self._received_unacked.to_bytes(4, "big")))
            self._received_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.received += length  # padding included: it is credited with the data
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if payload and (error := stream.feed(payload)) is not None:
            self.reset(stream, error)
            return
        if flags & END_STREAM:
            self._end(stream, RpcError(StatusCode.INTERNAL, "stream ended without status"))

    def _on_control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind != PING or not flags & ACK:
            self.heard = True  # anything but the answer to our own PING ends a silence
        if kind in (HEADERS, CONTINUATION):
            self._on_headers(kind, flags, stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._apply_settings(payload)
                self._write(frame(SETTINGS, ACK, 0))
                if not self.ready.done():
                    self.ready.set_result(None)
        elif kind == PING:
            if flags & ACK:
                self._keepalive.acked(payload)
            else:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window += increment
            elif (stream := self._streams.get(stream_id)) is not None:
                stream.send_window += increment
            self._window_opened.set()
        elif kind == RST_STREAM:
            stream = self._streams.get(stream_id)
            if stream is not None:
                code = int.from_bytes(payload[:4], "big")
                if code == REFUSED_STREAM:
                    error: RpcError = Unprocessed("engine refused the stream (REFUSED_STREAM)")
                else:
                    status = RST_STATUS.get(code, StatusCode.INTERNAL)
                    error = RpcError(status, f"engine reset the stream (HTTP/2 error {code})")
                self._end(stream, error)
        elif kind == GOAWAY:
            self._on_goaway(payload)

    def _on_goaway(self, payload: bytes) -> None:
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        debug = payload[8:]
        self.usable = False
        if code == ENHANCE_YOUR_CALM and debug == b"too_many_pings":
            self._keepalive.too_many_pings()
        elif code:
            log.info("engine sent GOAWAY (HTTP/2 error %d): %r", code, bytes(debug[:200]))
        # Calls above last-stream-id were never processed: refused, safe to retry. The others
        # finish normally; the connection closes when the last of them ends.
        for stream in [s for sid, s in self._streams.items() if sid > last]:
            self._end(stream, Unprocessed("engine is going away and did not process the call"))
        if not self._streams:
            self.close()
        self._on_change(False)

    def _apply_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                self._window_opened.set()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
                self._on_change(False)

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
        headers = self._decode_headers(bytes(block))
        stream = self._streams.get(sid)
        if stream is None:
            return
        if not stream.headers_seen:
            stream.headers_seen = True
            status = next((v for k, v in headers if k == b":status"), b"200")
            if status != b"200":
                self._end(stream, RpcError(http_status(int(status)), f"HTTP status {status!r}"))
                return
        if first_flags & END_STREAM:
            self._end(stream, status_from(headers))

    def _decode_headers(self, block: bytes) -> list[tuple[bytes, bytes]]:
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        changes, size = self._table_changes, table.maxsize
        headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)
        if self._table_changes != changes or table.maxsize != size:
            # The block changed the table: what other blocks' indices mean may have moved.
            self._header_cache.clear()
        elif len(self._header_cache) < _HEADER_CACHE_BLOCKS:
            self._header_cache[block] = headers
        return headers

    def _end(self, stream: Http2Stream, error: RpcError | None) -> None:
        self._remove(stream)
        stream.finish(error)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._outbox.append(data)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        outbox = self._outbox
        if not outbox:
            return
        self._outbox = []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
