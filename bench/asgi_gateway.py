"""herdsman's application on another HTTP server, to measure the servers against each other.

    python -m bench.asgi_gateway --server herdsman|uvicorn|granian --port P -- SERVE_FLAGS

SERVE_FLAGS are `herdsman serve` flags (`--worker grpc://...`, `--model-path ...`). One process
(granian: its supervisor and one worker) builds the same ServingContext as a gateway process
and serves the same GatewayApp, either on herdsman's own server (``herdsman``: the reference,
without herdsman's supervisor around it) or as an ASGI application: streamed bodies are sent
chunk by chunk, and a client that disconnects cancels the handler, as herdsman's server does
(ASGI delivers the disconnect through ``receive``, as Starlette's StreamingResponse listens for
it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from herdsman.api.app import GatewayApp
from herdsman.config import GatewayConfig
from herdsman.http import Request, Response, StreamingResponse
from herdsman.serve.context import build_context, probe_fleet

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ENV = "HERDSMAN_ASGI_SERVE_ARGS"


def gateway_config(serve_args: list[str]) -> GatewayConfig:
    from herdsman.serve.options import add_serve_arguments
    from herdsman.serve.options_config import config_from_args

    parser = argparse.ArgumentParser(prog="herdsman serve")
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(serve_args))


class AsgiGateway:
    """GatewayApp behind the ASGI interface; the context is built at lifespan startup."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._app: GatewayApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                ctx = await build_context(self._config, await probe_fleet(self._config))
                self._app = GatewayApp(ctx)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._app is not None:
                    await self._app.ctx.registry.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._app is not None, "lifespan startup did not run"
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            received_at=time.perf_counter(),
        )
        handler = asyncio.current_task()
        assert handler is not None

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            handler.cancel()

        watcher = asyncio.create_task(disconnect())
        try:
            response = await self._app(request)
            if isinstance(response, Response):
                await _send_head(send, response.status, response.content_type, response.headers)
                await send({"type": "http.response.body", "body": response.body})
            else:
                await self._stream(response, send)
        except asyncio.CancelledError:
            return  # the client went away: the handler's cancellation aborted its engine work
        finally:
            watcher.cancel()

    async def _stream(self, response: StreamingResponse, send: Send) -> None:
        chunks = response.chunks
        try:
            extra = [*response.headers, ("cache-control", "no-cache")]
            await _send_head(send, response.status, response.content_type, extra)
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            try:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if response.on_close is not None:
                    response.on_close()


async def _send_head(
    send: Send, status: int, content_type: str, headers: list[tuple[str, str]]
) -> None:
    raw = [(b"content-type", content_type.encode())]
    raw += [(name.encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})


def granian_app() -> AsgiGateway:
    """Granian's factory target: its worker process rebuilds the app from the environment."""
    return AsgiGateway(gateway_config(json.loads(os.environ[_ENV])))


async def _serve_herdsman(config: GatewayConfig, host: str, port: int) -> None:
    from herdsman.http import HttpServer
    from herdsman.http.server import bind_socket
    from herdsman.serve.gateway import server_limits

    ctx = await build_context(config, await probe_fleet(config))
    server = HttpServer(GatewayApp(ctx), server_limits(config))
    await server.start(bind_socket(host, port))
    print(f"bench.asgi_gateway: herdsman listening on {host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.asgi_gateway", description=__doc__)
    parser.add_argument("--server", choices=("herdsman", "uvicorn", "granian"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--protective",
        action="store_true",
        help="uvicorn and granian with their own protective settings set as herdsman's "
        "(5 s request-reading timeouts, 256 connections): for bench/http_robustness.py",
    )
    args = parser.parse_args(argv[:split])
    serve_args = argv[split + 1 :]
    config = gateway_config(serve_args)
    if args.server == "herdsman":
        import uvloop

        uvloop.run(_serve_herdsman(config, args.host, args.port))
    elif args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            AsgiGateway(config),
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan="on",
            access_log=False,
            log_level="warning",
            # uvicorn's nearest settings: its keep-alive timeout, and 503 beyond N connections
            # or tasks.
            **({"timeout_keep_alive": 5, "limit_concurrency": 256} if args.protective else {}),
        )
    else:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
        from granian.http import HTTP1Settings

        os.environ[_ENV] = json.dumps(serve_args)
        Granian(
            "bench.asgi_gateway:granian_app",
            factory=True,
            address=args.host,
            port=args.port,
            interface=Interfaces.ASGI,
            workers=1,
            runtime_threads=1,
            runtime_mode=RuntimeModes.st,
            loop=Loops.uvloop,
            http=HTTPModes.http1,
            websockets=False,
            log_level="warning",
            **(
                {"http1_settings": HTTP1Settings(header_read_timeout=5000), "backpressure": 256}
                if args.protective
                else {}
            ),
        ).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
