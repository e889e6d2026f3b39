"""What one server lets a client do: sizes, connection counts and the time it has to send."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ServerLimits:
    max_body_bytes: int = 32 * 1024 * 1024
    # Request line excluded; header names and values, summed.
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 16 * 1024
    # Open connections per server; more are answered 503 and closed.
    max_connections: int = 4096
    # Requests parsed ahead of the one being answered, per connection; beyond: reading pauses.
    max_pipelined: int = 16
    # A request's line and headers must arrive within header_timeout of its first byte (or of
    # the connection's start, TLS handshake included), its body within body_timeout of the
    # headers. keepalive_timeout: idle time between a response and the next request.
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    # A client that takes none of a response for this long (its socket buffers stay full) is
    # dropped: its handler, its engine request and its concurrency slot are let go.
    send_timeout: float = 60.0
    # After an error answer that closes the connection: how long what the client still sends is
    # read and dropped, so that closing does not reset the connection under the answer.
    linger_timeout: float = 2.0

    @property
    def max_head_bytes(self) -> int:
        """Raw bytes a request line and header block may take, framing included."""
        return self.max_url_bytes + self.max_header_bytes + 4 * self.max_headers + 1024
