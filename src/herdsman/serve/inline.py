"""``--start-method inline``: the gateway serves in the supervisor's own process.

One interpreter where the other start methods run three or four (the supervisor, multiprocessing's
fork server and resource tracker, the gateway process): the smallest footprint herdsman has, for
a small box or a container whose orchestrator restarts what exits. Nothing is shared
copy-on-write, so nothing turns private as the process runs either. What it gives up:
- one process, so one core's worth of serving;
- a gateway that fails is not replaced in place: the process exits non-zero for its orchestrator
  to restart, and it has no watchdog (a loop cannot watch itself).

The supervisor is unchanged: it talks to the gateway over the same control channel as to a child,
both ends in this process and event loop, so fleet changes, health and admin requests take one
path whatever the start method.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import multiprocessing
from collections.abc import Callable

from herdsman.config import GatewayConfig
from herdsman.serve.control import ControlChannel, Message, Pong, Ready, Shutdown
from herdsman.serve.processes import reserve_port

log = logging.getLogger(__name__)

# How long the gateway gets to load and listen (as a child process gets).
_START_TIMEOUT = 120.0


@dataclasses.dataclass(eq=False)
class InlineChild:
    """The gateway, as the supervisor addresses it."""

    index: int
    channel: ControlChannel


class InlineGateway:
    """The one gateway of ``--start-method inline``, run as a task of the supervisor's loop.

    Offers the supervisor what ``GatewayProcesses`` does. ``on_lost(error)``: the gateway stopped
    while it should serve; the supervisor stops too, and exits with that error.
    """

    count = 1

    def __init__(
        self,
        config: GatewayConfig,
        on_ready: Callable[[InlineChild], None],
        on_message: Callable[[InlineChild, Message], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._config = config
        self._on_ready = on_ready
        self._on_message = on_message
        self._on_lost = on_lost
        self._child: InlineChild | None = None
        self._ready: asyncio.Future[Ready] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.serving = False
        self.board_path = None  # a process that dies leaves no slot behind: the process goes

    def send_all(self, message: Message) -> list[InlineChild]:
        if self._child is None or self._task is None or self._task.done():
            return []
        self._child.channel.send(message)
        return [self._child]

    async def start(self) -> Ready:
        # The serving code, imported only now: this process serves. Its tokenizers load on this
        # thread, as the fork server loads them: loaded by a helper thread, their heap stays in
        # that thread's malloc arena, and fastokens' tables are built by the thread that encodes
        # first (~40 MB), then its matching state in each thread that encodes (~16 MB).
        from herdsman.serve.gateway import GatewayProcess
        from herdsman.serve.preload import load_ahead, planned

        load_ahead(*planned(self._config))
        loop = asyncio.get_running_loop()
        ours, theirs = multiprocessing.Pipe(duplex=True)
        ready = self._ready = loop.create_future()
        self._child = InlineChild(0, ControlChannel(ours, self._from_gateway, lambda: None))
        self._child.channel.start()
        reservation = reserve_port(self._config)
        try:
            # A copy, as a child process gets one: the supervisor changes its own as the fleet
            # changes and tells the gateway over the channel.
            gateway = GatewayProcess(copy.deepcopy(self._config), theirs, 0, own_signals=False)
            task = self._task = loop.create_task(gateway.run(), name="gateway")
            await asyncio.wait({ready, task}, timeout=_START_TIMEOUT, return_when="FIRST_COMPLETED")
        finally:
            reservation.close()
        if not ready.done():
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise RuntimeError(f"the gateway did not listen within {_START_TIMEOUT:g}s")
            task.result()  # its error, if it failed
            raise RuntimeError("the gateway exited during start-up")
        task.add_done_callback(self._exited)
        self.serving = True
        return ready.result()

    def _from_gateway(self, message: Message) -> None:
        assert self._child is not None and self._ready is not None
        if isinstance(message, Ready):
            if not self._ready.done():
                self._ready.set_result(message)
            self._on_ready(self._child)
        elif not isinstance(message, Pong):
            self._on_message(self._child, message)

    def _exited(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        log.error("the gateway stopped while serving: %r; exiting", error)
        self._on_lost(error or RuntimeError("the gateway stopped while serving"))

    async def watchdog(self) -> None:
        """Nothing to do: the watchdog's ping would be answered by the loop that sends it."""

    def cancel_pending(self) -> None:
        """Nothing waits to start: a failed gateway is not replaced in this process."""

    async def shutdown(self) -> None:
        """Drain the gateway (``--drain-timeout``), then cancel what is still running."""
        self._stopping = True
        task = self._task
        if task is None or self._child is None:
            return
        if not task.done():
            self._child.channel.send(Shutdown(drain_timeout=self._config.drain_timeout))
            done, _ = await asyncio.wait({task}, timeout=self._config.drain_timeout + 5)
            if not done:
                log.warning("the gateway did not drain in time; cancelling it")
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._child.channel.stop()
        from herdsman.observability.tracing import shutdown_tracing

        shutdown_tracing()
