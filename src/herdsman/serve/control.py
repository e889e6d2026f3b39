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

from herdsman.serve.fleet import WorkerSpec

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


class FleetState(msgspec.Struct, tag=True):
    """Supervisor -> a process that is ready: every engine worker now (it adds what it lacks and
    drops what is gone), and the ones still being waited for."""

    specs: list[WorkerSpec]
    pending: list[str] = msgspec.field(default_factory=list)


class WorkerAdded(msgspec.Struct, tag=True):
    """Supervisor -> process: route to this engine too (acknowledged with ``WorkerAck``)."""

    spec: WorkerSpec


class WorkerRemoved(msgspec.Struct, tag=True):
    """Supervisor -> process: stop routing to this engine (acknowledged with ``WorkerAck``)."""

    url: str


class WorkerPending(msgspec.Struct, tag=True):
    """Supervisor -> process: this engine was added but does not answer yet (still loading)."""

    url: str


class WorkerAck(msgspec.Struct, tag=True):
    """Process -> supervisor: a WorkerAdded or WorkerRemoved was applied (or failed)."""

    url: str
    ok: bool = True
    error: str = ""


class AdminRequest(msgspec.Struct, tag=True):
    """Process -> supervisor: an admin API call that changes the fleet (POST/DELETE /workers)."""

    token: int
    op: str  # "add" | "remove"
    url: str = ""
    worker_id: str = ""
    # add: seconds to wait for the engine to answer before replying "pending".
    wait: float = 30.0
    # add: disaggregated serving's role ("regular", "prefill", "decode") and an SGLang
    # prefill's bootstrap port.
    role: str = "regular"
    bootstrap_port: int | None = None


class AdminReply(msgspec.Struct, tag=True):
    token: int
    status: int
    body: bytes  # JSON


Message = (
    Ready
    | Activate
    | WorkerHealth
    | WorkerSuspect
    | Ping
    | Pong
    | Shutdown
    | FleetState
    | WorkerAdded
    | WorkerRemoved
    | WorkerPending
    | WorkerAck
    | AdminRequest
    | AdminReply
)

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
