"""One gateway process: its own event loop, engine channels, tokenizer and listening socket.

Started by the supervisor, one per core. It binds the shared port itself with SO_REUSEPORT, so
the kernel spreads new connections evenly over the processes (one inherited socket would wake
whichever process is least busy accepting, which balances badly).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import ssl
from multiprocessing.connection import Connection
from pathlib import Path

import msgspec

from herdsman.access.gate import protect
from herdsman.api.app import GatewayApp
from herdsman.config import GatewayConfig
from herdsman.http import HttpServer, ServerLimits
from herdsman.http.server import bind_socket
from herdsman.observability import METRICS
from herdsman.observability.tracing import TracingApp, shutdown_tracing
from herdsman.pipeline.context import ServingContext
from herdsman.routing import Worker
from herdsman.serve.context import add_worker, build_context, remove_engine, stop_kv_streams
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
from herdsman.serve.fleet import WorkerSpec
from herdsman.serve.shared_files import SharedBoard

log = logging.getLogger(__name__)


def server_limits(config: GatewayConfig) -> ServerLimits:
    return ServerLimits(
        max_body_bytes=config.max_body_bytes,
        max_header_bytes=config.max_header_bytes,
        max_url_bytes=config.max_url_bytes,
        max_connections=config.max_connections,
        max_pipelined=config.max_pipelined_requests,
        header_timeout=config.http_header_timeout,
        body_timeout=config.http_body_timeout,
        keepalive_timeout=config.keepalive_timeout,
        send_timeout=config.http_send_timeout,
    )


def server_tls(config: GatewayConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class GatewayProcess:
    def __init__(
        self,
        config: GatewayConfig,
        conn: Connection,
        index: int | None,
        *,
        own_signals: bool = True,
    ) -> None:
        self._config = config
        # Off when the process is the supervisor's own (``--start-method inline``): SIGTERM is the
        # supervisor's, which drains this gateway as it would a child.
        self._own_signals = own_signals
        self._index = index  # None: a warm spare, waiting to be given a slot
        self._stop = asyncio.Event()
        self._activated = asyncio.Event()
        self._drain_timeout = config.drain_timeout
        self._ctx: ServingContext | None = None
        self._control = ControlChannel(conn, self._on_message, self._on_supervisor_gone)
        self._admin_tokens = itertools.count(1)
        self._admin_replies: dict[int, asyncio.Future[AdminReply]] = {}
        # Fleet changes are applied one at a time, in the order the supervisor sent them.
        self._fleet_changes: asyncio.Queue[Message] = asyncio.Queue()

    async def run(self) -> None:
        config = self._config
        ctx = self._ctx = await build_context(config, list(config.worker_specs))
        ctx.fleet = self
        for worker in ctx.registry:
            worker.on_suspect = self._suspect
        self._control.start()
        changes = asyncio.create_task(self._apply_fleet_changes(), name="fleet changes")
        loop = asyncio.get_running_loop()
        if self._own_signals:
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        if self._index is None and not await self._wait_for_slot(self._models()):
            changes.cancel()
            await self._close(ctx)
            return
        assert self._index is not None
        if config.metrics_dir:
            METRICS.registry.share_through(config.metrics_dir)
            snapshots = asyncio.create_task(METRICS.registry.run_snapshots(), name="metrics")
        if config.admission_board:
            # A gateway-wide concurrency limit: this process's slot on the shared board.
            ctx.admission.board = SharedBoard(
                Path(config.admission_board), config.processes, self._index
            )
        server = HttpServer(
            # Request ids and spans around keys, limits and CORS.
            TracingApp(protect(GatewayApp(ctx), config, self._index), config),
            server_limits(config),
            ssl=server_tls(config),
            access_log=config.access_log,
        )
        await server.start(bind_socket(config.host, config.port, reuse_port=True))
        self._control.send(Ready(index=self._index, pid=os.getpid(), model=self._models()))
        await self._stop.wait()
        ctx.draining = True
        log.info("process %d draining: %d responses in flight", self._index, server.in_flight)
        await server.drain(self._drain_timeout)
        # Streams cut at the deadline unwind, and their engines get an Abort, before engines close.
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while server.in_flight and loop.time() < end:
            await asyncio.sleep(0.01)
        await ctx.settle(2.0)
        changes.cancel()
        if config.metrics_dir:
            snapshots.cancel()
            METRICS.registry.write_snapshot()
        await self._close(ctx)

    def _models(self) -> str:
        return ",".join(sorted(self._ctx.models)) if self._ctx is not None else ""

    async def _wait_for_slot(self, model: str) -> bool:
        """As a warm spare: loaded and idle until the supervisor hands over a dead slot."""
        self._control.send(Ready(index=-1, pid=os.getpid(), model=model, listening=False))
        stop = asyncio.ensure_future(self._stop.wait())
        activated = asyncio.ensure_future(self._activated.wait())
        await asyncio.wait({stop, activated}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        activated.cancel()
        return self._activated.is_set() and not self._stop.is_set()

    async def _close(self, ctx: ServingContext) -> None:
        self._control.stop()
        await stop_kv_streams(ctx)
        await ctx.registry.close()

    def _suspect(self, worker: Worker, reason: str) -> None:
        self._control.send(WorkerSuspect(url=worker.url, reason=reason))

    # -- the fleet -----------------------------------------------------------------------------
    async def add_worker(
        self, url: str, wait: float, role: str = "regular", bootstrap_port: int | None = None
    ) -> tuple[int, dict[str, object]]:
        return await self._admin(
            AdminRequest(
                token=0, op="add", url=url, wait=wait, role=role, bootstrap_port=bootstrap_port
            )
        )

    async def remove_worker(self, worker_id: str) -> tuple[int, dict[str, object]]:
        return await self._admin(AdminRequest(token=0, op="remove", worker_id=worker_id))

    async def _admin(self, request: AdminRequest) -> tuple[int, dict[str, object]]:
        request.token = next(self._admin_tokens)
        future = asyncio.get_running_loop().create_future()
        self._admin_replies[request.token] = future
        try:
            self._control.send(request)
            reply = await asyncio.wait_for(future, request.wait + _ADMIN_SLACK)
        except TimeoutError:
            return 504, {"error": {"message": "the supervisor did not answer", "code": 504}}
        finally:
            self._admin_replies.pop(request.token, None)
        return reply.status, msgspec.json.decode(reply.body)

    async def _apply_fleet_changes(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        while True:
            message = await self._fleet_changes.get()
            try:
                if isinstance(message, WorkerAdded):
                    await self._add(message.spec)
                    self._control.send(WorkerAck(url=message.spec.url))
                elif isinstance(message, WorkerRemoved):
                    remove_engine(ctx, message.url)
                    ctx.pending.discard(message.url)
                    self._control.send(WorkerAck(url=message.url))
                elif isinstance(message, FleetState):
                    wanted = {spec.url for spec in message.specs}
                    for url in {w.url for w in ctx.registry} - wanted:
                        remove_engine(ctx, url)
                    for spec in message.specs:
                        await self._add(spec)
                    ctx.pending = set(message.pending) - wanted
            except Exception as exc:  # one engine that fails to connect must not stop the rest
                log.exception("could not apply %s", type(message).__name__)
                url = getattr(message, "url", "") or getattr(
                    getattr(message, "spec", None), "url", ""
                )
                if url:
                    self._control.send(WorkerAck(url=url, ok=False, error=str(exc)))

    async def _add(self, spec: WorkerSpec) -> None:
        ctx = self._ctx
        assert ctx is not None
        ctx.pending.discard(spec.url)
        for worker in await add_worker(ctx, self._config, spec):
            worker.on_suspect = self._suspect

    def _on_message(self, message: Message) -> None:
        ctx = self._ctx
        if isinstance(message, Ping):
            self._control.send(Pong(seq=message.seq))
        elif isinstance(message, WorkerHealth) and ctx is not None:
            for worker in ctx.registry.by_url(message.url):
                worker.set_health(message.healthy, message.reason)
        elif isinstance(message, (WorkerAdded, WorkerRemoved, FleetState)):
            self._fleet_changes.put_nowait(message)
        elif isinstance(message, WorkerPending) and ctx is not None:
            ctx.pending.add(message.url)
        elif isinstance(message, AdminReply):
            future = self._admin_replies.get(message.token)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Activate):
            self._index = message.index
            self._activated.set()
        elif isinstance(message, Shutdown):
            self._drain_timeout = message.drain_timeout
            self._stop.set()

    def _on_supervisor_gone(self) -> None:
        log.warning("process %s lost its supervisor; draining", self._index)
        self._stop.set()


# An admin call waits for the supervisor this much longer than the engine wait it asked for
# (every process applying the change, a tokenizer to load for a new model).
_ADMIN_SLACK = 120.0


def gateway_process_main(config: GatewayConfig, conn: Connection, index: int | None) -> None:
    """Entry point of a spawned gateway process."""
    import uvloop

    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{'spare' if index is None else index}] "
        "%(name)s: %(message)s",
    )
    # Ctrl-C reaches the whole process group; the supervisor decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(GatewayProcess(config, conn, index).run())
    finally:
        # A process forked by the fork server ends in os._exit: no atexit handler runs, so the
        # spans still batched and the log handlers are flushed here.
        shutdown_tracing()
        logging.shutdown()
