"""The transport interface and its error."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """How a transport connects to and watches over one engine."""

    connect_timeout: float = 10.0
    # PING a connection with calls in flight that has received nothing for keepalive_interval;
    # no PING ACK within keepalive_timeout fails the connection's calls with UNAVAILABLE.
    keepalive_interval: float = 20.0
    keepalive_timeout: float = 10.0
    # Largest message accepted from the engine (RESOURCE_EXHAUSTED beyond it).
    max_message_bytes: int = 256 * 1024 * 1024
    # TLS (grpcs:// workers): CA bundle to verify the engine (None: the system's), and a client
    # certificate and key for mTLS.
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


# Custom metadata of a call: (key, value) pairs sent as request headers.
Metadata = tuple[tuple[str, str], ...]

# A stream's listener is offered each message as it arrives, in the connection's callback,
# while the stream's reader waits with nothing queued; it answers with one of these.
DECLINED = 0  # not taken: the message is read as usual, and the listener rests until then
TAKEN = 1
ENOUGH = 2  # taken, and nothing more is wanted: the stream ends and the call is cancelled
Listener = Callable[[bytes], int]


class RpcError(Exception):
    """A call ended with a non-OK gRPC status (or could not be made at all)."""

    def __init__(self, code: grpc.StatusCode, details: str = "", *, refused: bool = False) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        # The engine refused the stream before processing it (HTTP/2 REFUSED_STREAM): safe to
        # retry, and back-pressure rather than failure.
        self.refused = refused


class Transport(Protocol):
    name: str

    def __init__(self, target: str, options: TransportOptions | None = None) -> None: ...

    async def unary(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float,
        metadata: Metadata | None = None,
    ) -> Any:
        """Call ``method`` (``/package.Service/Method``) and return the decoded response."""
        ...

    def stream(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        listener: Listener | None = None,
    ) -> AsyncGenerator[Any, None]:
        """A server stream; closing the generator early cancels the call.

        ``listener``: offered the raw messages after the first while the generator waits for
        one (a transport may never offer any); what it takes the generator does not yield.

        ``metadata``: extra request headers (lowercase ASCII keys), such as ``traceparent``.

        ``timeout`` is the call's deadline: past it the stream raises DEADLINE_EXCEEDED and the
        call is cancelled at the engine.
        """
        ...

    async def close(self) -> None: ...
