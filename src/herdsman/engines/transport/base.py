"""The transport interface, its error and gRPC's status codes."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol


class StatusCode(enum.Enum):
    """gRPC's status codes, with the names and values of ``grpc.StatusCode``.

    Our own, so that the native transport, which the gateway uses unless told otherwise, needs no
    import of grpcio (~20 MB of a process, for its C core): grpcio is imported only by the
    grpcio transport, which maps its codes here by name."""

    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")


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

    def __init__(self, code: StatusCode, details: str = "", *, refused: bool = False) -> None:
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
