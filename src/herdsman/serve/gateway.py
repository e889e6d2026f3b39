"""Run one gateway process: context, health checks, HTTP server, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from herdsman.api.app import GatewayApp
from herdsman.config import GatewayConfig
from herdsman.http import HttpServer, ServerLimits
from herdsman.http.server import bind_socket
from herdsman.routing import HealthChecker
from herdsman.serve.context import build_context

log = logging.getLogger(__name__)


async def serve_gateway(config: GatewayConfig, sock: socket.socket | None = None) -> None:
    ctx = await build_context(config)
    checker = HealthChecker(ctx.registry, config.health_check_interval, config.health_check_timeout)
    checker.start()
    server = HttpServer(GatewayApp(ctx), ServerLimits(max_body_bytes=config.max_body_bytes))
    sock = sock or bind_socket(config.host, config.port)
    await server.start(sock)
    host, port = sock.getsockname()[:2]
    print(f"herdsman listening on http://{host}:{port} model={ctx.model.name}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: %d responses in flight", server.in_flight)
    await server.drain(config.drain_timeout)
    await checker.stop()
    await ctx.registry.close()
