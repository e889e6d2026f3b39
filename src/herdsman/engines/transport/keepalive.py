"""Keepalive for the native client: PING a connection whose calls have gone silent.

One timer per connection, armed only while it has calls in flight; frames only set a flag
(``Http2Connection.heard``) that the timer reads, so nothing is done per frame or message.

Policy, mindful of gRPC servers' ping-abuse rules (grpc core, by default, allows a client one
PING per 5 minutes while it sends no data, counts earlier ones as strikes, and after the third
strike sends GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") and closes the connection):

- a PING goes out only when a connection with calls in flight has received nothing for one
  interval; an unanswered PING (no ACK and nothing else within the timeout) fails every call on
  the connection with UNAVAILABLE and drops it;
- while the silence continues, each answered PING multiplies the wait before the next by 4, up
  to 5 minutes: a connection that stays silent for long (a queued or slow request) collects at
  most two strikes and is then pinged at the rate the server allows, forever;
- an engine that says "too_many_pings" anyway doubles this transport's interval for its new
  connections, as grpc's own client does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from herdsman.engines.transport.base import RpcError, StatusCode

if TYPE_CHECKING:
    from herdsman.engines.transport.http2 import Http2Connection

log = logging.getLogger(__name__)

# grpc core's default GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS.
_SERVER_MIN_PING_INTERVAL = 300.0
_BACKOFF = 4


class KeepalivePolicy:
    """A transport's keepalive settings, shared by its connections."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout

    def too_many_pings(self) -> None:
        self.interval *= 2
        log.warning(
            "engine sent GOAWAY too_many_pings; keepalive interval is now %.1fs", self.interval
        )


class Keepalive:
    """One connection's keepalive timer."""

    def __init__(self, policy: KeepalivePolicy) -> None:
        self._policy = policy
        self._connection: Http2Connection | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._ping_out = False
        self._acked = False
        self._backoff = 1
        self._ids = itertools.count(1)
        self.pings_sent = 0

    def attach(self, connection: Http2Connection) -> None:
        self._connection = connection

    def start(self) -> None:
        """The connection has calls again: watch it."""
        if self._handle is None and self._connection is not None:
            self._connection.heard = False
            self._ping_out = False
            self._backoff = 1
            self._arm(self._policy.interval)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._ping_out = False

    def acked(self, payload: bytes) -> None:
        self._acked = True

    def too_many_pings(self) -> None:
        self._policy.too_many_pings()

    def _arm(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        connection = self._connection
        if connection is None or not connection.active_streams:
            return
        policy = self._policy
        if self._ping_out:
            self._ping_out = False
            if not (self._acked or connection.heard):
                connection.fail(
                    RpcError(
                        StatusCode.UNAVAILABLE,
                        f"engine did not answer a keepalive ping within {policy.timeout:g}s",
                    )
                )
                return
            # Alive. Data since the PING ends the silence; an ACK alone means it goes on.
            self._backoff = 1 if connection.heard else min(self._backoff * _BACKOFF, 1 << 20)
            connection.heard = False
            ceiling = max(policy.interval, _SERVER_MIN_PING_INTERVAL)
            self._arm(min(policy.interval * self._backoff, ceiling))
            return
        if connection.heard:
            connection.heard = False
            self._backoff = 1
            self._arm(policy.interval)
            return
        # Silent for a whole interval with calls in flight: is the engine still there?
        self._acked = False
        self._ping_out = True
        self.pings_sent += 1
        connection.send_ping(next(self._ids).to_bytes(8, "big"))
        self._arm(policy.timeout)
