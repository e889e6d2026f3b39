"""The gateway's processes: one per core, started loaded, replaced when they die, watched, drained.

- A process that dies is replaced at once by a fresh one, forked from the fork server that holds
  the serving code and tokenizers loaded (herdsman.serve.preload: serving again in ~0.2 s), or,
  with ``--warm-spare``, by an idle process already connected to the engines.
- A replacement (or spare) that dies before it is ready is retried with exponential backoff, and
  a slot whose processes keep dying young backs off the same way: a crash loop costs little.
- A watchdog pings every ready process over its control channel; one whose event loop has not
  answered for ``--watchdog-timeout`` is killed, and so replaced.

What the processes must agree on (the engine workers and their health) is the supervisor's
(herdsman.serve.supervisor): this module tells it when a process is ready to be told the fleet,
and hands it every other message a process sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path

from herdsman.config import GatewayConfig
from herdsman.http.server import bind_socket
from herdsman.serve.control import Activate, ControlChannel, Message, Ping, Pong, Ready, Shutdown
from herdsman.serve.entry import gateway_process
from herdsman.serve.preload import ENV as PRELOAD_ENV
from herdsman.serve.preload import planned, preload_spec
from herdsman.serve.shared_files import SharedBoard

log = logging.getLogger(__name__)

# A process that lived at least this long died of something else than its start: no backoff.
_HEALTHY_LIFETIME = 60.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 30.0
# How long the first processes get to load and listen.
_START_TIMEOUT = 120.0


def reserve_port(config: GatewayConfig) -> socket.socket:
    """Hold the port (bound, not listening) so that ``--port 0`` means one port for all: the
    processes bind it with SO_REUSEPORT, and ``config.port`` is the one chosen."""
    sock = bind_socket(config.host, config.port, reuse_port=True, listen=False)
    config.port = sock.getsockname()[1]
    return sock


@dataclasses.dataclass(eq=False)
class Child:
    """One gateway process, as the supervisor sees it."""

    index: int | None  # None: the warm spare
    process: BaseProcess
    channel: ControlChannel
    ready: asyncio.Future[Ready]  # resolved once the process listens
    # Resolved when a spare has loaded everything and waits for a slot.
    warm: asyncio.Future[Ready]
    started: float
    stopping: bool = False
    last_pong: float = 0.0  # monotonic time of the last Pong (0: not watched yet)

    @property
    def watched(self) -> bool:
        return self.last_pong > 0.0


class GatewayProcesses:
    """The serving processes of one gateway and its warm spare, if any.

    ``on_ready(child)``: a process (a first one, a replacement, the spare) is loaded and must now
    learn the fleet as it is. ``on_message(child, message)``: anything else a process sent (a
    worker it could not reach, an admin request, a fleet change applied).
    """

    def __init__(
        self,
        config: GatewayConfig,
        count: int,
        on_ready: Callable[[Child], None],
        on_message: Callable[[Child, Message], None],
    ) -> None:
        self._config = config
        self.count = count
        self._on_ready_hook = on_ready
        self._on_message_hook = on_message
        self._children: dict[int, Child] = {}
        # A loaded process kept aside: a dead slot is handed to it at once instead of waiting
        # for a fresh process to import and load its tokenizer (seconds on a busy machine).
        self._spare: Child | None = None
        # Gateway processes are forked by a fork server that has imported the serving code and
        # loaded the tokenizers once (herdsman.serve.preload): they share that memory, and a
        # replacement starts loaded. The fork server is itself spawned: it holds none of this
        # process's threads.
        self._mp = multiprocessing.get_context(config.start_method)
        self._stopping = False
        self._backoff: dict[int | None, float] = {}  # slot (None: the spare) -> next delay
        self._pending_starts: set[asyncio.TimerHandle] = set()
        self._ping_seq = 0
        # Every slot was ready once: from now on a process that dies is replaced.
        self.serving = False
        # The admission board whose slot a dead process leaves (see serve/shared_files.py).
        self.board_path: Path | None = None

    def _everyone(self) -> list[Child]:
        """Every slot's process and the spare, if any."""
        children = list(self._children.values())
        if self._spare is not None:
            children.append(self._spare)
        return children

    def live(self) -> list[Child]:
        """Every running process, the spare included: who a fleet change goes to."""
        return [c for c in self._everyone() if c.process.is_alive()]

    def send_all(self, message: Message) -> list[Child]:
        children = self.live()
        for child in children:
            child.channel.send(message)
        return children

    # -- starting ------------------------------------------------------------------------------
    def start_fork_server(self) -> None:
        """Have the fork server preload the tokenizers of the models known now (it starts with the
        first process and reads its environment then)."""
        os.environ[PRELOAD_ENV] = preload_spec(*planned(self._config))
        self._mp.set_forkserver_preload(["herdsman.serve.forkserver_preload"])

    async def start(self) -> Ready:
        """Start every slot (and the spare) and wait until each listens; what the first said."""
        reservation = reserve_port(self._config)
        try:
            children = [self._start_child(i) for i in range(self.count)]
            waits = [c.ready for c in children]
            if self._config.warm_spare:
                # Ready means ready to replace a process too: the spare loads alongside.
                self._spare = self._start_child(None)
                waits.append(self._spare.warm)
            ready = await asyncio.wait_for(asyncio.gather(*waits), timeout=_START_TIMEOUT)
        finally:
            reservation.close()
        self.serving = True
        return ready[0]

    def _start_child(self, index: int | None) -> Child:
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=gateway_process,
            args=(self._config, child_conn, index),
            name=f"herdsman-gateway-{'spare' if index is None else index}",
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        loop = asyncio.get_running_loop()
        child = Child(
            index,
            process,
            None,  # type: ignore[arg-type]
            loop.create_future(),
            loop.create_future(),
            time.monotonic(),
        )
        child.channel = ControlChannel(
            parent_conn, lambda message: self._on_message(child, message), lambda: None
        )
        child.channel.start()
        loop.add_reader(process.sentinel, self._on_exit, child)
        if index is not None:
            self._children[index] = child
        return child

    def _on_message(self, child: Child, message: Message) -> None:
        if isinstance(message, Pong):
            child.last_pong = time.monotonic()
        elif isinstance(message, Ready):
            if not message.listening:
                if not child.warm.done():
                    child.warm.set_result(message)
            elif not child.ready.done():
                child.ready.set_result(message)
            child.last_pong = time.monotonic()  # watched from now on
            self._on_ready_hook(child)
        else:
            self._on_message_hook(child, message)

    # -- replacing -----------------------------------------------------------------------------
    def _on_exit(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        # The sentinel closes as the process exits, a moment before it can be reaped.
        child.process.join(1)
        child.channel.stop()
        # ...or as the fork server that forked it dies: then the process may still run, unseen
        # and on the port. It goes (its exit status was the fork server's to report; its pid is
        # not reused while it lives, and is gone once the fork server has reaped it).
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(child.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        if self._stopping or child.stopping:
            return
        lived = time.monotonic() - child.started
        if child.index is None:
            self._spare_exited(child, lived)
            return
        index = child.index
        if self._children.get(index) is not child:
            return  # an old process of a slot that was already handed on
        if self.board_path is not None:
            SharedBoard.clear_slot(self.board_path, index)
        if not self.serving:
            # Before the gateway ever served: a process that cannot start fails the start.
            if not child.ready.done():
                child.ready.set_exception(
                    RuntimeError(f"gateway process {index} exited during start-up")
                )
            return
        log.error(
            "gateway process %d (pid %s) exited with %s after %.1f s; replacing it",
            index,
            child.process.pid,
            child.process.exitcode,
            lived,
        )
        healthy_life = child.ready.done() and lived >= _HEALTHY_LIFETIME
        self._replace(index, retry=not healthy_life)

    def _spare_exited(self, child: Child, lived: float) -> None:
        if self._spare is child:
            self._spare = None
        if not self.serving:
            if not child.warm.done():
                child.warm.set_exception(RuntimeError("the warm spare exited during start-up"))
            return
        warm = child.warm.done() and not child.warm.exception()
        log.warning(
            "the warm spare (pid %s) exited %s; starting another",
            child.process.pid,
            "while idle" if warm else "during start-up",
        )
        retry = not (warm and lived >= _HEALTHY_LIFETIME)
        self._schedule(self._delay(None, retry), self._start_spare)

    def _replace(self, index: int, *, retry: bool) -> None:
        """Give slot ``index`` a process: the warm spare now, else a fresh one after backoff."""
        started = time.monotonic()
        spare = self._spare
        if spare is not None and spare.warm.done() and spare.process.is_alive():
            self._spare = None
            spare.index = index
            self._children[index] = spare
            spare.channel.send(Activate(index=index))
            self._log_when_ready(spare, index, started)
            self._schedule(0.0, self._start_spare)
            return
        delay = self._delay(index, retry)
        if delay:
            log.warning("restarting gateway process %d in %.1f s", index, delay)
        self._schedule(delay, lambda: self._start_replacement(index, started))

    def _start_replacement(self, index: int, started: float) -> None:
        if self._stopping:
            return
        try:
            child = self._start_child(index)
        except OSError as exc:
            # The fork server died a moment ago and is not reaped yet (its socket refuses):
            # the next try, after backoff, starts a new one.
            log.warning("could not start gateway process %d (%s)", index, exc)
            self._replace(index, retry=True)
            return
        self._log_when_ready(child, index, started)

    @staticmethod
    def _log_when_ready(child: Child, index: int, started: float) -> None:
        def done(future: asyncio.Future[Ready]) -> None:
            if not future.cancelled() and future.exception() is None:
                log.info("gateway process %d back in %.2f s", index, time.monotonic() - started)

        child.ready.add_done_callback(done)

    def _start_spare(self) -> None:
        if self._stopping or self._spare is not None or not self._config.warm_spare:
            return
        try:
            self._spare = self._start_child(None)
        except OSError as exc:  # as in _start_replacement
            log.warning("could not start the warm spare (%s)", exc)
            self._schedule(self._delay(None, True), self._start_spare)

    def _delay(self, slot: int | None, retry: bool) -> float:
        """Backoff for a slot: none after a healthy life, doubling while its processes die young."""
        if not retry:
            self._backoff.pop(slot, None)
            return 0.0
        delay = self._backoff.get(slot, 0.0)
        self._backoff[slot] = min(_BACKOFF_MAX, max(_BACKOFF_INITIAL, delay * 2))
        return delay

    def _schedule(self, delay: float, start: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._pending_starts.discard(handle)
            start()

        handle = loop.call_later(delay, run)
        self._pending_starts.add(handle)

    def cancel_pending(self) -> None:
        """Forget the replacements still waiting out their backoff (the gateway is stopping)."""
        for handle in self._pending_starts:
            handle.cancel()
        self._pending_starts.clear()

    # -- the watchdog --------------------------------------------------------------------------
    async def watchdog(self) -> None:
        timeout = self._config.watchdog_timeout
        interval = min(2.0, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self._ping_seq += 1
            now = time.monotonic()
            for child in self._everyone():
                if not child.watched or child.stopping or not child.process.is_alive():
                    continue
                silent = now - child.last_pong
                if silent > timeout:
                    log.error(
                        "gateway process %s (pid %s) has not answered for %.1f s; killing it",
                        "spare" if child.index is None else child.index,
                        child.process.pid,
                        silent,
                    )
                    child.last_pong = 0.0
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
                else:
                    child.channel.send(Ping(seq=self._ping_seq))

    # -- stopping ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Drain every process (``--drain-timeout``), then kill what is still running."""
        self._stopping = True
        timeout = self._config.drain_timeout
        children = self._everyone()
        for child in children:
            child.channel.send(Shutdown(drain_timeout=timeout))
        deadline = time.monotonic() + timeout + 5
        for child in children:
            while child.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if child.process.is_alive():
                log.warning("gateway process %s did not drain in time; killing it", child.index)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.join(2)
