"""One call's receiving side on the native client: its messages, its flow-control credit, its end.

Receive flow control follows consumption: the engine's bytes are credited back (a stream
WINDOW_UPDATE) only once the caller has read every complete message it was sent, so a caller that
stops reading stops its own engine stream after one window, and what the gateway holds per
stream is bounded by one window plus one incomplete message. Bytes of an incomplete message are
credited while nothing complete waits to be read, so a message larger than the window still
arrives (memory for it is bounded by the maximum message size, checked at its length prefix).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from herdsman.engines.transport.base import ENOUGH, TAKEN, Listener, RpcError, StatusCode

# Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). A streamed token message is 20-300
# bytes, so 256 KiB holds thousands of them: a consumer's hiccup (a GC pause, a slow socket
# write) never stalls the engine, and a bulk message (a tokenizer chunk, prompt logprobs) still
# moves at 256 KiB per round trip, which at a LAN's 0.1-0.3 ms is over 1 GB/s. It is also the
# bound on what a stalled client costs the gateway: 1000 stalled streams hold at most ~256 MB.
STREAM_WINDOW = 256 * 1024


class CreditSink(Protocol):
    def send_credit(self, stream: Http2Stream, amount: int) -> None: ...


class Unprocessed(RpcError):
    """The engine says it never processed this call (REFUSED_STREAM, or a GOAWAY whose
    last-stream-id is below it): safe to retry as is, and back-pressure rather than failure."""

    def __init__(self, details: str) -> None:
        super().__init__(StatusCode.UNAVAILABLE, details, refused=True)


class Http2Stream:
    """gRPC messages queue here until the caller reads them."""

    __slots__ = (
        "_batch",
        "_buffer",
        "_loop",
        "_max_message",
        "_sink",
        "_waiter",
        "closed",
        "credited",
        "enough",
        "error",
        "fault",
        "headers_seen",
        "id",
        "listener",
        "messages",
        "received",
        "send_window",
    )

    def __init__(
        self, sink: CreditSink, stream_id: int, send_window: int, window: int, max_message: int
    ) -> None:
        self.id = stream_id
        self.messages: deque[bytes] = deque()
        self.closed = False
        self.error: RpcError | None = None
        self.headers_seen = False
        self.send_window = send_window
        # DATA bytes received (counted by the connection) and credited back to the engine; the
        # difference is the part of our window the engine has used.
        self.received = 0
        self.credited = 0
        self._batch = max(1, window // 4)
        self._max_message = max_message
        self._sink = sink
        self._buffer = b""
        self._waiter: asyncio.Future[None] | None = None
        # Offered each message as it arrives while read() waits with nothing queued: the
        # caller's whole chain is then idle, so handling it here, in the connection's callback,
        # keeps order and saves a task wake-up per message (the per-token push path).
        self.listener: Listener | None = None
        self.enough = False  # the listener wanted no more: read() ends the call
        self.fault: BaseException | None = None  # the listener failed: read() raises it
        # Held, not looked up per message: on Python 3.11 asyncio.get_running_loop() makes a
        # getpid() system call every time (it checks for a fork), one per streamed token.
        self._loop = asyncio.get_running_loop()

    @property
    def buffered_bytes(self) -> int:
        """Bytes this stream holds for its caller: queued messages and an incomplete one."""
        return sum(len(m) + 5 for m in self.messages) + len(self._buffer)

    def feed(self, data: bytes) -> RpcError | None:
        """Split DATA payload into messages; an error means the call must be reset."""
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        messages = self.messages
        listener = self.listener
        if listener is not None and (self._waiter is None or self._waiter.done()):
            listener = None  # the caller is busy: it reads what comes now in order
        while size - offset >= 5:
            length = int.from_bytes(buffer[offset + 1 : offset + 5], "big")
            if length > self._max_message:
                # Refused at its length prefix, before any of it is buffered (as grpc does).
                return RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"received message larger than max ({length} vs. {self._max_message})",
                )
            end = offset + 5 + length
            if end > size:
                break
            if buffer[offset]:
                return RpcError(StatusCode.INTERNAL, "compressed messages unsupported")
            message = buffer[offset + 5 : end]
            offset = end
            if listener is not None and not messages:
                taken = self._offer(listener, message)
                if taken == TAKEN:
                    continue
                listener = None
                if taken == ENOUGH:
                    break
            messages.append(message)
        self._buffer = buffer[offset:] if offset < size and not self.enough else b""
        # Nothing complete waits to be read (a listener took it, or only part of a message
        # came): reading cannot free any window, so credit it now, or a message larger than
        # the window would never complete and a listened-to stream would never be credited.
        if not messages and self.received - self.credited >= self._batch:
            self._credit()
        if messages or self.enough or self.fault is not None:
            self._wake()
        return None

    def _offer(self, listener: Listener, message: bytes) -> int:
        try:
            taken = listener(message)
        except Exception as exc:  # the caller's failure, raised from read(); the call ends
            self.fault = exc
            self.listener = None
            return ENOUGH
        if taken == ENOUGH:
            self.enough = True
            self.listener = None
        return taken

    def _credit(self) -> None:
        amount = self.received - self.credited
        self.credited = self.received
        if not self.closed:
            self._sink.send_credit(self, amount)

    def finish(self, error: RpcError | None) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes | None:
        """The next message; None when the call ended OK (or its listener wanted no more);
        raises RpcError, or what the listener raised, otherwise."""
        messages = self.messages
        while True:
            if self.fault is not None:
                raise self.fault
            if self.enough:
                messages.clear()
                return None
            if messages:
                return messages.popleft()
            if self.closed:
                if self.error is not None:
                    raise self.error
                return None
            # The caller has read everything complete: all it was sent is consumed (or is an
            # incomplete message), so it may all be credited, in batches of a quarter window.
            # Crediting only here keeps the per-message path free of accounting; a caller that
            # falls behind stops its stream after one window and restarts it once caught up.
            if self.received - self.credited >= self._batch:
                self._credit()
            self._waiter = self._loop.create_future()
            await self._waiter
