"""The control channel between the supervisor and its gateway processes.

One duplex pipe per process carries small msgspec messages both ways. State that must be the same
in every process (today: which engine workers are healthy) is decided in the supervisor and
broadcast, so N processes do not each poll every engine. The supervisor's watchdog pings each
process over it: a process whose event loop stops answering is replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from multiprocessing.connection import Connection

import msgspec

log = logging.getLogger(__name__)


class Ready(msgspec.Struct, tag=True):
    """Process -> supervisor: loaded (a warm spare, not listening yet) or serving its slot."""

    index: int
    pid: int
    model: str
    listening: bool = True


class Activate(msgspec.Struct, tag=True):
    """Supervisor -> warm spare: take over slot ``index`` and start listening."""

    index: int


class WorkerHealth(msgspec.Struct, tag=True):
    """Supervisor -> process: an engine worker's health as the supervisor sees it."""

    url: str
    healthy: bool
    reason: str = ""


class WorkerSuspect(msgspec.Struct, tag=True):
    """Process -> supervisor: a request could not reach this engine worker; check it now."""

    url: str
    reason: str


class Ping(msgspec.Struct, tag=True):
    """Supervisor -> process: answered with ``Pong`` by the process's event loop (the watchdog)."""

    seq: int


class Pong(msgspec.Struct, tag=True):
    seq: int


class Shutdown(msgspec.Struct, tag=True):
    drain_timeout: float


Message = Ready | Activate | WorkerHealth | WorkerSuspect | Ping | Pong | Shutdown

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ControlChannel:
    """Non-blocking message exchange over a pipe, driven by the event loop's reader callbacks."""

    def __init__(
        self, conn: Connection, on_message: Callable[[Message], None], on_closed: Callable[[], None]
    ) -> None:
        self._conn = conn
        self._on_message = on_message
        self._on_closed = on_closed
        self._closed = False

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._conn.fileno(), self._readable)

    def send(self, message: Message) -> None:
        if self._closed:
            return
        try:
            self._conn.send_bytes(_encoder.encode(message))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._close()

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._on_message(_decoder.decode(self._conn.recv_bytes()))
        except (EOFError, ConnectionResetError, OSError):
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._conn.fileno())
        self._on_closed()

    def stop(self) -> None:
        if not self._closed:
            self._closed = True
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self._conn.close()
