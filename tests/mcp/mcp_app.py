"""A real MCP server (the `mcp` SDK's MCPServer, v1's FastMCP) for tests/mcp and bench, run as
its own process:

    python mcp_app.py stdio [--log FILE]
    python mcp_app.py sse|streamable_http --port-file FILE [--log FILE]

HTTP servers bind 127.0.0.1 on a free port and write it to --port-file once listening. With
--log, the process appends a line per event, so tests count what reached the server:
`<pid> start` once, then `<pid> <method> <tool name or -> <x-test header or ->` per request
(`server/discover` or `initialize` opens a client session).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections import defaultdict
from typing import Any

import uvicorn
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

LOG: str | None = None


def log(line: str) -> None:
    if LOG is not None:
        # One write per line in append mode: lines from concurrent requests never interleave.
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {line}\n")


# Nanoseconds each tools/call took inside the server (from its middleware to the result), for
# the benchmark: the `timings` tool hands them over and starts afresh.
_handled: list[int] = []


class Logged(ServerMiddleware[Any]):
    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        name = ctx.params.get("name") if ctx.params else None
        headers = getattr(ctx.request, "headers", None)
        header = headers.get("x-test") if headers is not None else None
        log(f"{ctx.method} {name or '-'} {header or '-'}")
        start = time.perf_counter_ns()
        result = await call_next(ctx)
        if ctx.method == "tools/call" and name != "timings":
            _handled.append(time.perf_counter_ns() - start)
        return result


app = MCPServer("herdsman-test", middleware=[Logged()])
_arrived: dict[str, int] = defaultdict(int)
_gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@app.tool()
def noop() -> str:
    """Do nothing (the benchmark's tool)."""
    return ""


@app.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    log("slow-started")
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@app.tool()
async def barrier(token: str, n: int) -> str:
    """Answer once `n` calls with this token are in progress at once: calls handled one at a
    time never get there (the caller's timeout ends them)."""
    _arrived[token] += 1
    if _arrived[token] >= n:
        _gates[token].set()
    await _gates[token].wait()
    return f"{n} together"


@app.tool()
def fail() -> str:
    """Raise."""
    raise ValueError("boom")


@app.tool()
def crash() -> str:
    """Exit the process mid-call."""
    log("crash")
    os._exit(3)


@app.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@app.tool()
def timings() -> str:
    """The server-side handling times (ns, a JSON list) of the tool calls since the last
    `timings`."""
    handled = json.dumps(_handled)
    _handled.clear()
    return handled


@app.custom_route("/health", methods=["GET"])
async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


@app.custom_route("/junk-html", methods=["GET", "POST", "DELETE"])
async def junk_html(request: Request) -> Response:
    """Not an MCP endpoint at all."""
    return Response("<html>hello</html>", media_type="text/html")


@app.custom_route("/junk-rpc", methods=["POST", "DELETE"])
async def junk_rpc(request: Request) -> Response:
    """JSON-RPC answers of the wrong shape to every request."""
    try:
        message = await request.json()
    except ValueError:
        return Response(status_code=400)
    if "id" not in message:
        return Response(status_code=202)
    return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": 42}})


def main() -> None:
    global LOG
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "sse", "streamable_http"])
    parser.add_argument("--log")
    parser.add_argument("--port-file")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    LOG = args.log
    log("start")
    if args.transport == "stdio":
        app.run("stdio")
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections. Without it a response written in two pieces waits
    # for the client's delayed ACK (40 ms a request on Linux) when uvicorn serves a socket
    # it was handed rather than one it made.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    starlette_app = app.sse_app() if args.transport == "sse" else app.streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(starlette_app, log_level="warning", lifespan="on"))
    if args.port_file:
        # Written whole then renamed, so a reader polling for the file never sees half of it.
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(sock.getsockname()[1]))
        os.replace(tmp, args.port_file)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
