"""The supervisor: the gateway's root process. It runs the serving processes
(herdsman.serve.processes: one per core, kept alive, drained on SIGTERM) and owns the state every
process must agree on, the engine workers:
- it probes the configured, added and discovered workers once for all processes, and sends each
  process the fleet as it changes (and the whole of it when a process starts);
- it health-checks the workers once for all processes and broadcasts changes, and checks a worker
  at once when a process reports that a request could not reach it;
- it answers the admin API's fleet changes (POST/DELETE /workers, which reach whichever process
  took the request), waiting until every process has applied them.

The supervisor serves no request, and its memory adds to the gateway's: it imports only what it
runs (engine clients for probes and health checks, the worker registry, the control channel),
never the serving code (the API, the pipeline, tokenizers, image processing); its processes'
target is ``herdsman.serve.entry``. tests/unit/test_supervisor_imports.py checks it. With
``--start-method inline`` (herdsman.serve.inline) it serves itself instead, one gateway in its own
event loop, spoken to over the same control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from herdsman.config import GatewayConfig
from herdsman.engines.connect import parse_worker_url
from herdsman.routing import HealthChecker, Worker, WorkerRegistry
from herdsman.serve.control import (
    AdminReply,
    AdminRequest,
    FleetState,
    Message,
    WorkerAck,
    WorkerAdded,
    WorkerHealth,
    WorkerPending,
    WorkerRemoved,
    WorkerSuspect,
)
from herdsman.serve.fleet import WorkerSpec, connect_worker_engine, probe_until_ready
from herdsman.serve.inline import InlineChild, InlineGateway
from herdsman.serve.processes import Child, GatewayProcesses
from herdsman.serve.shared_files import SharedBoard, make_store_directory, remove_store_directory

log = logging.getLogger(__name__)


# A process reported unreachable workers: at most one immediate health check per worker this often.
_SUSPECT_DEBOUNCE = 1.0
# At start, once one worker answers: how long the others get to answer before processes start.
_STARTUP_GRACE = 2.0
# How long a fleet change waits for every process to apply it (a new model's tokenizer to load).
_ACK_TIMEOUT = 60.0


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


# A gateway process as the supervisor addresses it: a child, or itself (--start-method inline).
Peer = Child | InlineChild


class Supervisor:
    def __init__(self, config: GatewayConfig, processes: int) -> None:
        self._config = config
        self._processes: GatewayProcesses | InlineGateway
        if config.start_method == "inline":
            self._processes = InlineGateway(
                config, on_ready=self._tell_fleet, on_message=self._on_message, on_lost=self._lost
            )
        else:
            self._processes = GatewayProcesses(
                config, processes, on_ready=self._tell_fleet, on_message=self._on_message
            )
        # Why the gateway stopped serving on its own (inline: nothing can replace it).
        self._failure: BaseException | None = None
        self._registry = WorkerRegistry()
        self._checker: HealthChecker | None = None
        self._stop = asyncio.Event()
        self._last_suspect_check: dict[str, float] = {}
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
        processes = self._processes
        await self._start_discovery()
        await self._start_fleet()
        metrics_dir = tempfile.TemporaryDirectory(prefix="herdsman-metrics-")
        config.metrics_dir = metrics_dir.name
        board = Path(metrics_dir.name) / "admission.board"
        SharedBoard.create(board, processes.count)
        config.admission_board = str(board)
        processes.board_path = board
        if config.tokenizer_cache_shared_bytes > 0 and config.tokenizer_cache_l1_bytes > 0:
            config.tokenizer_cache_dir = make_store_directory()
        if config.start_method == "forkserver":
            processes.start_fork_server()
        try:
            ready = await processes.start()
            scheme = "https" if config.tls_cert else "http"
            print(
                f"herdsman listening on {scheme}://{config.host}:{config.port} "
                f"model={ready.model} processes={processes.count}",
                flush=True,
            )
            self._checker = HealthChecker(
                self._registry, config.health_check_interval, config.health_check_timeout
            )
            self._checker.start()
            watchdog = (
                asyncio.create_task(processes.watchdog(), name="watchdog")
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
            await processes.shutdown()
            await self._registry.close()
            if self._failure is not None:
                raise RuntimeError("the gateway stopped serving") from self._failure
        finally:
            await self._stop_discovery()
            processes.cancel_pending()
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
            self._processes.send_all(WorkerRemoved(url=url))
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
        if self._processes.serving:
            await self._broadcast_and_wait(WorkerAdded(spec=spec), url)

    async def _broadcast_and_wait(self, message: Message, url: str) -> list[str]:
        """Send a fleet change to every process and wait until each has applied it; the errors
        processes reported (empty when all went well)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[WorkerAck]] = []
        for child in self._processes.send_all(message):
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

    def _on_ack(self, child: Peer, ack: WorkerAck) -> None:
        waiting = self._acks.get((id(child), ack.url))
        if waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(ack)
            if not waiting:
                del self._acks[(id(child), ack.url)]

    async def _admin(self, child: Peer, request: AdminRequest) -> None:
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
        self._processes.send_all(WorkerPending(url=url))
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
            self._processes.send_all(WorkerRemoved(url=url))

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

    # -- what the processes say -----------------------------------------------------------
    def _tell_fleet(self, child: Peer) -> None:
        """A (re)started process learns the fleet as it is now, and every worker's health."""
        child.channel.send(FleetState(specs=self._ordered_specs(), pending=sorted(self._probes)))
        for worker in self._registry:
            if not worker.healthy:
                child.channel.send(WorkerHealth(url=worker.url, healthy=False))

    def _on_message(self, child: Peer, message: Message) -> None:
        if isinstance(message, WorkerSuspect):
            for worker in self._registry.by_url(message.url):
                self._check_suspect(worker)
        elif isinstance(message, WorkerAck):
            self._on_ack(child, message)
        elif isinstance(message, AdminRequest):
            asyncio.get_running_loop().create_task(
                self._admin(child, message), name=f"admin {message.op}"
            )

    def _lost(self, error: BaseException) -> None:
        """The inline gateway stopped serving: the supervisor stops, and exits with its error."""
        self._failure = error
        self._stop.set()

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
        self._processes.send_all(
            WorkerHealth(url=worker.url, healthy=worker.healthy, reason=reason)
        )


async def run_supervisor(config: GatewayConfig, processes: int) -> None:
    await Supervisor(config, processes).run()
