"""The supervisor: starts one gateway process per core, keeps them alive, drains them on SIGTERM.

It also owns the state every process must agree on: it health-checks the engine workers once for
all processes and broadcasts changes over the control channel, and it checks a worker at once when
a process reports that a request could not reach it.

Keeping processes alive:
- a process that dies is replaced at once by a fresh one, forked from the fork server that holds
  the serving code and tokenizers loaded (herdsman.serve.preload: serving again in ~0.2 s), or,
  with ``--warm-spare``, by an idle process already connected to the engines;
- a replacement (or spare) that dies before it is ready is retried with exponential backoff, and a
  slot whose processes keep dying young backs off the same way: a crash loop costs little;
- a watchdog pings every ready process over its control channel; one whose event loop has not
  answered for ``--watchdog-timeout`` is killed, and so replaced.

The supervisor serves no request, and its memory adds to the gateway's: it imports only what it
runs (engine clients for probes and health checks, the worker registry, the control channel),
never the serving code (the API, the pipeline, tokenizers, image processing); its processes'
target is ``herdsman.serve.entry``. tests/unit/test_supervisor_imports.py checks it.
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
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import msgspec

from herdsman.config import GatewayConfig
from herdsman.engines.connect import parse_worker_url
from herdsman.http.server import bind_socket
from herdsman.routing import HealthChecker, Worker, WorkerRegistry
from herdsman.serve.control import (
    Activate,
    AdminReply,
    AdminRequest,
    ControlChannel,
    FleetState,
    Message,
    Ping,
    Pong,
    Ready,
    Shutdown,
    WorkerAck,
    WorkerAdded,
    WorkerHealth,
    WorkerPending,
    WorkerRemoved,
    WorkerSuspect,
)
from herdsman.serve.entry import gateway_process
from herdsman.serve.fleet import WorkerSpec, connect_worker_engine, probe_until_ready
from herdsman.serve.preload import ENV as PRELOAD_ENV
from herdsman.serve.preload import config_modules, preload_spec
from herdsman.serve.shared_files import SharedBoard, make_store_directory, remove_store_directory

log = logging.getLogger(__name__)


# A process that lived at least this long died of something else than its start: no backoff.
_HEALTHY_LIFETIME = 60.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 30.0
# A process reported unreachable workers: at most one immediate health check per worker this often.
_SUSPECT_DEBOUNCE = 1.0
# At start, once one worker answers: how long the others get to answer before processes start.
_STARTUP_GRACE = 2.0
# How long a fleet change waits for every process to apply it (a new model's tokenizer to load).
_ACK_TIMEOUT = 60.0


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@dataclasses.dataclass(eq=False)
class _Child:
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


class Supervisor:
    def __init__(self, config: GatewayConfig, processes: int) -> None:
        self._config = config
        self._count = processes
        self._children: dict[int, _Child] = {}
        # A loaded process kept aside: a dead slot is handed to it at once instead of waiting
        # for a fresh process to import and load its tokenizer (seconds on a busy machine).
        self._spare: _Child | None = None
        # Gateway processes are forked by a fork server that has imported the serving code and
        # loaded the tokenizers once (herdsman.serve.preload): they share that memory, and a
        # replacement starts loaded. The fork server is itself spawned: it holds none of this
        # process's threads.
        self._mp = multiprocessing.get_context(config.start_method)
        self._registry = WorkerRegistry()
        self._checker: HealthChecker | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._serving = False  # every slot was ready once: from now on failures are retried
        self._backoff: dict[int | None, float] = {}  # slot (None: the spare) -> next delay
        self._pending_starts: set[asyncio.TimerHandle] = set()
        self._last_suspect_check: dict[str, float] = {}
        self._board_path: Path | None = None
        self._ping_seq = 0
        self.restarts = 0
        # The fleet: engines serving (their specs, as processes get them), being probed, and
        # removed by an admin while still being probed.
        self._specs: dict[str, WorkerSpec] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._removed: set[str] = set()
        self._probe_errors: dict[str, BaseException] = {}
        self._first_ready: asyncio.Future[None] | None = None
        self._acks: dict[tuple[int, str], list[asyncio.Future[WorkerAck]]] = {}
        # Workers from outside: Kubernetes pods (--service-discovery) and the other replicas'
        # admin changes (--state-url redis://...); herdsman.discovery.
        self._pods: Any = None
        self._shared: Any = None

    async def run(self) -> None:
        config = self._config
        await self._start_discovery()
        await self._start_fleet()
        metrics_dir = tempfile.TemporaryDirectory(prefix="herdsman-metrics-")
        config.metrics_dir = metrics_dir.name
        self._board_path = Path(metrics_dir.name) / "admission.board"
        SharedBoard.create(self._board_path, self._count)
        config.admission_board = str(self._board_path)
        if config.tokenizer_cache_shared_bytes > 0 and config.tokenizer_cache_l1_bytes > 0:
            config.tokenizer_cache_dir = make_store_directory()
        if config.start_method == "forkserver":
            self._start_fork_server()
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
            self._serving = True
            scheme = "https" if config.tls_cert else "http"
            print(
                f"herdsman listening on {scheme}://{config.host}:{config.port} "
                f"model={ready[0].model} processes={self._count}",
                flush=True,
            )
            self._checker = HealthChecker(
                self._registry, config.health_check_interval, config.health_check_timeout
            )
            self._checker.start()
            watchdog = (
                asyncio.create_task(self._watchdog(), name="watchdog")
                if config.watchdog_timeout > 0
                else None
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
            await self._stop.wait()
            await self._stop_discovery()
            if watchdog is not None:
                watchdog.cancel()
            await self._checker.stop()
            await self._shutdown()
            await self._registry.close()
        finally:
            await self._stop_discovery()
            for handle in self._pending_starts:
                handle.cancel()
            metrics_dir.cleanup()
            if config.tokenizer_cache_dir:
                remove_store_directory(config.tokenizer_cache_dir)

    # -- the fleet -----------------------------------------------------------------------------
    async def _start_fleet(self) -> None:
        """Probe every configured engine; start serving once one answers (the others join as
        they do: an engine still loading is waited for, in the background)."""
        dynamic = self._pods is not None or self._shared is not None
        if not self._config.workers and not dynamic:
            raise ValueError("at least one --worker grpc://HOST:PORT is needed")
        for url in self._config.workers:
            self._probe(url)
        loop = asyncio.get_running_loop()
        first = self._first_ready or loop.create_future()
        self._first_ready = first
        pending = list(self._probes.values())
        # Discovered workers: the first that answers starts the gateway.
        done = asyncio.ensure_future(asyncio.wait(pending)) if pending else loop.create_future()
        try:
            await asyncio.wait_for(
                asyncio.wait({first, done}, return_when=asyncio.FIRST_COMPLETED),
                self._config.worker_startup_timeout,
            )
        except TimeoutError:
            raise RuntimeError(
                f"no worker answered within {self._config.worker_startup_timeout:g}s: "
                + (", ".join(self._config.workers) or "(discovered workers)")
            ) from None
        if not self._specs:
            # Every probe ended without a worker: report the first error.
            for error in self._probe_errors.values():
                raise error
            raise RuntimeError("no worker could be reached")
        # The others that answer at once join before the processes start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), _STARTUP_GRACE)

    def _probe(self, url: str, wait: float | None = None) -> asyncio.Task[None]:
        task = self._probes.get(url)
        if task is None:
            timeout = self._config.worker_startup_timeout if wait is None else wait
            task = asyncio.get_running_loop().create_task(
                self._probe_worker(url, timeout), name=f"probe {url}"
            )
            self._probes[url] = task
        return task

    async def _probe_worker(self, url: str, timeout: float) -> None:
        known = {spec.model_name: spec.tokenizer_dir for spec in self._specs.values()}
        try:
            engine, spec = await probe_until_ready(
                self._config, url, connect_worker_engine, known, timeout
            )
        except Exception as exc:
            log.error("worker %s: %s", url, exc)
            self._probes.pop(url, None)
            self._probe_errors[url] = exc
            self._broadcast(WorkerRemoved(url=url))
            return
        self._probe_errors.pop(url, None)
        self._probes.pop(url, None)
        if url in self._removed:
            await engine.close()
            return
        worker = Worker(url=url, engine=engine, model=spec.info, model_name=spec.model_name)
        worker.on_change = self._broadcast_health
        self._registry.add(worker)
        self._specs[url] = spec
        self._config.worker_specs = self._ordered_specs()
        log.info("worker %s ready: model %r, %d rank(s)", url, spec.model_name, spec.dp_size)
        if self._first_ready is not None and not self._first_ready.done():
            self._first_ready.set_result(None)
        if self._serving:
            await self._broadcast_and_wait(WorkerAdded(spec=spec), url)

    def _broadcast(self, message: Message) -> list[_Child]:
        children = [c for c in self._children.values() if c.process.is_alive()]
        if self._spare is not None and self._spare.process.is_alive():
            children.append(self._spare)
        for child in children:
            child.channel.send(message)
        return children

    async def _broadcast_and_wait(self, message: Message, url: str) -> list[str]:
        """Send a fleet change to every process and wait until each has applied it; the errors
        processes reported (empty when all went well)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[WorkerAck]] = []
        for child in self._broadcast(message):
            future = loop.create_future()
            self._acks.setdefault((id(child), url), []).append(future)
            futures.append(future)
        errors: list[str] = []
        done, _ = await asyncio.wait(futures, timeout=_ACK_TIMEOUT) if futures else (set(), set())
        for future in done:
            ack = future.result()
            if not ack.ok:
                errors.append(ack.error)
        if len(done) < len(futures):
            errors.append(f"{len(futures) - len(done)} process(es) did not confirm in time")
        return errors

    def _on_ack(self, child: _Child, ack: WorkerAck) -> None:
        waiting = self._acks.get((id(child), ack.url))
        if waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(ack)
            if not waiting:
                del self._acks[(id(child), ack.url)]

    async def _admin(self, child: _Child, request: AdminRequest) -> None:
        try:
            if request.op == "add":
                status, body = await self._admin_add(
                    request.url, request.wait, request.role, request.bootstrap_port
                )
                if self._shared is not None and status in (200, 202):
                    await self._shared.added(request.url, request.role, request.bootstrap_port)
            elif request.op == "remove":
                status, body = await self._admin_remove(request.worker_id)
                if self._shared is not None and status == 200:
                    await self._shared.removed(str(body["url"]))
            else:
                status, body = 400, _error(f"unknown admin operation {request.op!r}")
        except Exception as exc:  # the caller gets an answer whatever happened
            log.exception("admin %s failed", request.op)
            status, body = 500, _error(str(exc))
        child.channel.send(
            AdminReply(token=request.token, status=status, body=msgspec.json.encode(body))
        )

    async def _admin_add(
        self, url: str, wait: float, role: str = "regular", bootstrap_port: int | None = None
    ) -> tuple[int, dict[str, object]]:
        try:
            parse_worker_url(url)
        except ValueError as exc:
            return 400, _error(str(exc))
        if url not in self._specs:
            if role == "regular":
                self._config.worker_roles.pop(url, None)
            else:
                self._config.worker_roles[url] = (role, bootstrap_port)
        self._removed.discard(url)
        self._probe_errors.pop(url, None)
        if url in self._specs:
            return 200, self._spec_view(self._specs[url], "already serving")
        task = self._probe(url)
        self._broadcast(WorkerPending(url=url))
        await asyncio.wait({task}, timeout=wait)
        if url in self._specs:
            return 200, self._spec_view(self._specs[url], "serving")
        if url in self._probe_errors:
            error = self._probe_errors[url]
            return 502, _error(f"worker {url} could not be added: {error}")
        return 202, {"url": url, "status": "pending", "message": "the engine does not answer yet"}

    async def _admin_remove(self, worker_id: str) -> tuple[int, dict[str, object]]:
        spec = next((s for s in self._specs.values() if worker_id in s.worker_ids), None)
        if spec is None:
            return 404, _error(f"no worker {worker_id!r}")
        url = spec.url
        self._removed.add(url)
        del self._specs[url]
        self._config.worker_specs = self._ordered_specs()
        for worker in self._registry.by_url(url):
            self._registry.remove(worker.id)
            await worker.engine.close()
        errors = await self._broadcast_and_wait(WorkerRemoved(url=url), url)
        body = self._spec_view(spec, "removed")
        if errors:
            body["errors"] = errors
        return 200, body

    # -- workers from outside (herdsman.discovery) -----------------------------------------------
    async def _start_discovery(self) -> None:
        config = self._config
        self._first_ready = asyncio.get_running_loop().create_future()
        if config.state_url:
            from herdsman.discovery.shared import SharedFleet

            self._shared = SharedFleet(config.state_url, self)
            for url, role, bootstrap_port in await self._shared.start():
                await self.discovered(url, role, bootstrap_port)
        if config.service_discovery:
            from herdsman.discovery import DiscoveryConfig, PodWatcher

            self._pods = PodWatcher(
                DiscoveryConfig(
                    namespace=config.discovery_namespace,
                    selector=config.discovery_selector,
                    port=config.discovery_port,
                    prefill_selector=config.prefill_selector,
                    decode_selector=config.decode_selector,
                    kubeconfig=config.discovery_kubeconfig,
                ),
                self,
            )
            self._pods.start()

    async def _stop_discovery(self) -> None:
        pods, shared, self._pods, self._shared = self._pods, self._shared, None, None
        if pods is not None:
            await pods.stop()
        if shared is not None:
            await shared.stop()

    async def discovered(self, url: str, role: str, bootstrap_port: int | None) -> None:
        """A worker found outside the admin API: added for every process, as POST /workers."""
        await self._admin_add(url, 0.0, role, bootstrap_port)

    async def lost(self, url: str) -> None:
        """A worker gone outside the admin API: removed for every process, as DELETE does."""
        spec = self._specs.get(url)
        if spec is not None:
            await self._admin_remove(spec.worker_ids[0])
        elif url in self._probes:
            self._removed.add(url)
            self._broadcast(WorkerRemoved(url=url))

    def _ordered_specs(self) -> list[WorkerSpec]:
        """Serving specs in the order the workers were configured (then added): every process
        lists its workers alike, and round robin starts where an operator expects."""
        order = {url: i for i, url in enumerate(self._config.workers)}
        return sorted(self._specs.values(), key=lambda spec: order.get(spec.url, len(order)))

    @staticmethod
    def _spec_view(spec: WorkerSpec, status: str) -> dict[str, object]:
        return {
            "url": spec.url,
            "ids": spec.worker_ids,
            "model": spec.model_name,
            "dp_size": spec.dp_size,
            "role": spec.role,
            "status": status,
        }

    def _reserve_port(self) -> socket.socket:
        """Hold the port (bound, not listening) so that ``--port 0`` means one port for all."""
        sock = bind_socket(self._config.host, self._config.port, reuse_port=True, listen=False)
        self._config.port = sock.getsockname()[1]
        return sock

    # -- processes -----------------------------------------------------------------------------
    def _start_fork_server(self) -> None:
        """Have the fork server preload the tokenizers of the models known now (it starts with the
        first process and reads its environment then)."""
        config = self._config
        dirs = [spec.tokenizer_dir for spec in config.worker_specs]
        modules = config_modules(config.policies(), config.grpc_transport)
        os.environ[PRELOAD_ENV] = preload_spec(dirs, config.chat_template, modules)
        self._mp.set_forkserver_preload(["herdsman.serve.forkserver_preload"])

    def _start_child(self, index: int | None) -> _Child:
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
        child = _Child(
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

    def _on_message(self, child: _Child, message: Message) -> None:
        if isinstance(message, Pong):
            child.last_pong = time.monotonic()
        elif isinstance(message, Ready):
            if not message.listening:
                if not child.warm.done():
                    child.warm.set_result(message)
            elif not child.ready.done():
                child.ready.set_result(message)
            child.last_pong = time.monotonic()  # watched from now on
            # A (re)started process learns the fleet as it is now, and every worker's health.
            child.channel.send(
                FleetState(specs=self._ordered_specs(), pending=sorted(self._probes))
            )
            for worker in self._registry:
                if not worker.healthy:
                    child.channel.send(WorkerHealth(url=worker.url, healthy=False))
        elif isinstance(message, WorkerSuspect):
            for worker in self._registry.by_url(message.url):
                self._check_suspect(worker)
        elif isinstance(message, WorkerAck):
            self._on_ack(child, message)
        elif isinstance(message, AdminRequest):
            asyncio.get_running_loop().create_task(
                self._admin(child, message), name=f"admin {message.op}"
            )

    def _on_exit(self, child: _Child) -> None:
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
        if self._board_path is not None:
            SharedBoard.clear_slot(self._board_path, index)
        if not self._serving:
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
        self.restarts += 1
        healthy_life = child.ready.done() and lived >= _HEALTHY_LIFETIME
        self._replace(index, retry=not healthy_life)

    def _spare_exited(self, child: _Child, lived: float) -> None:
        if self._spare is child:
            self._spare = None
        if not self._serving:
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
            self._on_ready(spare, index, started)
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
        self._on_ready(child, index, started)

    def _on_ready(self, child: _Child, index: int, started: float) -> None:
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

    # -- the watchdog --------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        timeout = self._config.watchdog_timeout
        interval = min(2.0, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self._ping_seq += 1
            now = time.monotonic()
            children = list(self._children.values())
            if self._spare is not None:
                children.append(self._spare)
            for child in children:
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

    # -- engine worker health ------------------------------------------------------------------
    def _check_suspect(self, worker: Worker) -> None:
        now = time.monotonic()
        if now - self._last_suspect_check.get(worker.url, 0.0) < _SUSPECT_DEBOUNCE:
            return
        self._last_suspect_check[worker.url] = now
        if self._checker is not None:
            asyncio.get_running_loop().create_task(
                self._checker.check(worker), name=f"check {worker.url}"
            )

    def _broadcast_health(self, worker: Worker, reason: str) -> None:
        update = WorkerHealth(url=worker.url, healthy=worker.healthy, reason=reason)
        for child in self._children.values():
            child.channel.send(update)
        if self._spare is not None:
            self._spare.channel.send(update)

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
                log.warning("gateway process %s did not drain in time; killing it", child.index)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.join(2)


async def run_supervisor(config: GatewayConfig, processes: int) -> None:
    await Supervisor(config, processes).run()
