"""The supervisor: starts one gateway process per core, keeps them alive, drains them on SIGTERM.

It also owns the state every process must agree on: it health-checks the engine workers once for
all processes and broadcasts changes over the control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess

from herdsman.config import GatewayConfig
from herdsman.engines import connect_engine
from herdsman.http.server import bind_socket
from herdsman.routing import HealthChecker, Worker, WorkerRegistry
from herdsman.serve.control import (
    Activate,
    ControlChannel,
    Message,
    Ready,
    Shutdown,
    WorkerFailed,
    WorkerHealth,
)
from herdsman.serve.gateway import gateway_process_main
from herdsman.serve.tokenizer_source import fetch_from_worker
from herdsman.tokenizer.shared_store import make_store_directory, remove_store_directory

log = logging.getLogger(__name__)

_spawn = multiprocessing.get_context("spawn")


@dataclasses.dataclass(eq=False)
class _Child:
    index: int | None  # None: the warm spare
    process: BaseProcess
    channel: ControlChannel
    ready: asyncio.Future[Ready]  # resolved once the process listens
    # Resolved when a spare has loaded everything and waits for a slot.
    warm: asyncio.Future[Ready]
    stopping: bool = False


class Supervisor:
    def __init__(self, config: GatewayConfig, processes: int) -> None:
        self._config = config
        self._count = processes
        self._children: dict[int, _Child] = {}
        # A loaded process kept aside: a dead slot is handed to it at once instead of waiting
        # for a fresh process to import and load its tokenizer (seconds on a busy machine).
        self._spare: _Child | None = None
        self._registry = WorkerRegistry()
        self._stopping = False
        self._stop = asyncio.Event()
        self.restarts = 0

    async def run(self) -> None:
        config = self._config
        await self._connect_engines()
        if not (config.tokenizer_path or config.model_path):
            # Fetched once here, so the processes load it from the local cache.
            config.tokenizer_path = str(await fetch_from_worker(next(iter(self._registry)).engine))
        metrics_dir = tempfile.TemporaryDirectory(prefix="herdsman-metrics-")
        config.metrics_dir = metrics_dir.name
        if config.tokenizer_cache_shared_bytes > 0 and config.tokenizer_cache_l1_bytes > 0:
            config.tokenizer_cache_dir = make_store_directory()
        try:
            reservation = self._reserve_port()
            try:
                children = [self._start_child(i) for i in range(self._count)]
                waits = [c.ready for c in children]
                if config.warm_spare:
                    # Ready means ready to replace a process too: the spare loads alongside.
                    self._spare = self._start_child(None)
                    waits.append(self._spare.warm)
                ready = await asyncio.wait_for(asyncio.gather(*waits), timeout=120)
            finally:
                reservation.close()
            print(
                f"herdsman listening on http://{config.host}:{config.port} "
                f"model={ready[0].model} processes={self._count}",
                flush=True,
            )
            checker = HealthChecker(
                self._registry, config.health_check_interval, config.health_check_timeout
            )
            checker.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
            await self._stop.wait()
            await checker.stop()
            await self._shutdown()
            await self._registry.close()
        finally:
            metrics_dir.cleanup()
            if config.tokenizer_cache_dir:
                remove_store_directory(config.tokenizer_cache_dir)

    async def _connect_engines(self) -> None:
        for url in self._config.workers:
            engine = await connect_engine(url, self._config.backend, self._config.grpc_transport)
            worker = Worker(url=url, engine=engine, model=await engine.model_info())
            worker.on_change = self._broadcast_health
            self._registry.add(worker)

    def _reserve_port(self) -> socket.socket:
        """Hold the port (bound, not listening) so that ``--port 0`` means one port for all."""
        sock = bind_socket(self._config.host, self._config.port, reuse_port=True, listen=False)
        self._config.port = sock.getsockname()[1]
        return sock

    def _start_child(self, index: int | None) -> _Child:
        parent_conn, child_conn = _spawn.Pipe(duplex=True)
        process = _spawn.Process(
            target=gateway_process_main,
            args=(self._config, child_conn, index),
            name=f"herdsman-gateway-{'spare' if index is None else index}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        loop = asyncio.get_running_loop()
        child = _Child(index, process, None, loop.create_future(), loop.create_future())  # type: ignore[arg-type]
        child.channel = ControlChannel(
            parent_conn,
            lambda message: self._on_message(child, message),
            lambda: None,
        )
        child.channel.start()
        loop.add_reader(process.sentinel, self._on_exit, child)
        if index is not None:
            self._children[index] = child
        return child

    def _on_message(self, child: _Child, message: Message) -> None:
        if isinstance(message, Ready):
            if not message.listening:
                if not child.warm.done():
                    child.warm.set_result(message)
            elif not child.ready.done():
                child.ready.set_result(message)
            # A (re)started process learns the current health of every engine worker.
            for worker in self._registry:
                if not worker.healthy:
                    child.channel.send(WorkerHealth(url=worker.url, healthy=False))
        elif isinstance(message, WorkerFailed):
            worker = self._registry.get(message.url)
            if worker is not None:
                worker.mark_failed(message.reason)

    def _broadcast_health(self, worker: Worker, reason: str) -> None:
        update = WorkerHealth(url=worker.url, healthy=worker.healthy, reason=reason)
        for child in self._children.values():
            child.channel.send(update)
        if self._spare is not None:
            self._spare.channel.send(update)

    def _on_exit(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        child.process.join(0)
        child.channel.stop()
        if self._stopping or child.stopping:
            return
        if child.index is None:
            if not child.warm.done():
                child.warm.set_exception(RuntimeError("the warm spare exited during start-up"))
                return
            log.warning("the warm spare (pid %s) exited; starting another", child.process.pid)
            self._spare = self._start_child(None)
            return
        if not child.ready.done():
            # A process that cannot start would fail the same way again: give up loudly.
            child.ready.set_exception(
                RuntimeError(f"gateway process {child.index} exited during start-up")
            )
            return
        log.error(
            "gateway process %d (pid %s) exited with %s; restarting it",
            child.index,
            child.process.pid,
            child.process.exitcode,
        )
        self.restarts += 1
        started = time.monotonic()
        spare = self._spare
        if spare is not None and spare.warm.done():
            replacement = spare
            replacement.index = child.index
            self._children[child.index] = replacement
            replacement.channel.send(Activate(index=child.index))
            self._spare = self._start_child(None)
        else:
            replacement = self._start_child(child.index)
        replacement.ready.add_done_callback(
            lambda _: log.info(
                "gateway process %d back in %.2f s", child.index, time.monotonic() - started
            )
        )

    async def _shutdown(self) -> None:
        self._stopping = True
        timeout = self._config.drain_timeout
        children = list(self._children.values())
        if self._spare is not None:
            children.append(self._spare)
        for child in children:
            child.channel.send(Shutdown(drain_timeout=timeout))
        deadline = time.monotonic() + timeout + 5
        for child in children:
            while child.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if child.process.is_alive():
                log.warning("gateway process %d did not drain in time; killing it", child.index)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.join(2)


async def run_supervisor(config: GatewayConfig, processes: int) -> None:
    await Supervisor(config, processes).run()
