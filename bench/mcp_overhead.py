"""What calling an MCP tool through `McpPool` costs the gateway, per transport.

    cd /work/main && .venv/bin/python -m bench.mcp_overhead [--calls 200] [--rounds 7]

One MCP server per transport (tests/mcp/mcp_app.py: the SDK's MCPServer; stdio spawned by
each client, SSE and streamable HTTP on 127.0.0.1), called with a no-op tool, one call at a
time, by

- ``raw``: the SDK's own `Client` on the same transport, sending `tools/call` directly (what
  any MCP client pays);
- ``pool``: `McpPool.call_tool` (session lookup, timeout scope, retry bookkeeping, result
  conversion) on top of the same SDK.

Rounds alternate the two, so drift in the machine's speed hits both alike. Reported per call,
median over rounds: wall time, this process's CPU (the client side only: servers are other
processes), and the server's own handling time (its middleware around the tool; returned by
its `timings` tool). `pool - raw` is the pool's own overhead; `raw - server` is the SDK's
client, transport and the server's protocol stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client import Transport
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from herdsman.mcp import McpPool, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "mcp" / "mcp_app.py"
TRANSPORTS = ("stdio", "sse", "streamable_http")
PATHS = {"sse": "/sse", "streamable_http": "/mcp"}


def start_http(transport: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / f"{transport}.port"
    process = subprocess.Popen(
        [sys.executable, str(APP), transport, "--port-file", str(port_file)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {transport} server did not start")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port_file.read_text()}"
    while True:
        try:
            if httpx2.get(base + "/health", timeout=5).status_code == 200:
                return process, base + PATHS[transport]
        except httpx2.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the {transport} server did not answer")
        time.sleep(0.05)


@asynccontextmanager
async def raw_client(transport: str, url: str | None) -> AsyncIterator[Client]:
    target: Transport
    if transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=[str(APP), "stdio"])
        target = stdio_client_quiet(params)
    elif transport == "sse":
        assert url is not None
        target = sse_client(url)
    else:
        assert url is not None
        target = streamable_http_client(url)
    async with Client(target, cache=None) as client:
        yield client


def stdio_client_quiet(params: StdioServerParameters) -> Transport:
    from mcp.client.stdio import stdio_client

    # Left open: it lives as long as the benchmark.
    return stdio_client(params, errlog=open(os.devnull, "w"))


NOOP = types.CallToolRequest(params=types.CallToolRequestParams(name="noop", arguments={}))


async def timed(calls: int, call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall ms, CPU ms) per call over `calls` sequential calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return (
        (time.perf_counter() - wall) * 1000 / calls,
        (time.process_time() - cpu) * 1000 / calls,
    )


async def server_ms(client: Client) -> float:
    """Median server handling time (ms) of the calls since the last ask."""
    result = await client.session.send_request(
        types.CallToolRequest(params=types.CallToolRequestParams(name="timings", arguments={})),
        types.CallToolResult,
    )
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    handled = json.loads(block.text)
    return statistics.median(handled) / 1e6 if handled else float("nan")


async def measure(transport: str, url: str | None, calls: int, rounds: int) -> dict[str, float]:
    if transport == "stdio":
        server = ServerConfig(
            label=transport, transport="stdio", command=sys.executable, args=(str(APP), "stdio")
        )
    else:
        assert url is not None
        server = ServerConfig(
            label=transport, transport="sse" if transport == "sse" else "streamable_http", url=url
        )
    results: dict[str, list[float]] = {
        k: [] for k in ("raw", "pool", "raw_cpu", "pool_cpu", "server")
    }
    with open(os.devnull, "w") as devnull:
        async with raw_client(transport, url) as client, McpPool(stdio_errlog=devnull) as pool:

            async def raw() -> None:
                await client.session.send_request(NOOP, types.CallToolResult)

            async def pooled() -> None:
                result = await pool.call_tool(server, "noop", {})
                assert not result.is_error, result.text

            await timed(50, raw)  # warm: connections, caches, the JIT-less interpreter's
            await timed(50, pooled)
            await server_ms(client)
            for _ in range(rounds):
                wall, cpu = await timed(calls, raw)
                results["raw"].append(wall)
                results["raw_cpu"].append(cpu)
                results["server"].append(await server_ms(client))
                wall, cpu = await timed(calls, pooled)
                results["pool"].append(wall)
                results["pool_cpu"].append(cpu)
    return {k: statistics.median(v) for k, v in results.items()}


async def main(args: argparse.Namespace) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for transport in args.transports:
                url = None
                if transport != "stdio":
                    process, url = start_http(transport, Path(tmp))
                    processes.append(process)
                rows.append((transport, await measure(transport, url, args.calls, args.rounds)))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    print(
        f"ms per sequential no-op tool call, median of {args.rounds} rounds of {args.calls} "
        f"calls ({'uvloop' if args.uvloop else 'asyncio'})"
    )
    header = (
        f"{'transport':<16}{'server':>8}{'raw':>8}{'pool':>8}{'pool-raw':>10}"
        f"{'raw cpu':>9}{'pool cpu':>10}{'Δcpu':>7}"
    )
    print(header)
    for transport, r in rows:
        print(
            f"{transport:<16}{r['server']:>8.3f}{r['raw']:>8.3f}{r['pool']:>8.3f}"
            f"{r['pool'] - r['raw']:>10.3f}{r['raw_cpu']:>9.3f}{r['pool_cpu']:>10.3f}"
            f"{r['pool_cpu'] - r['raw_cpu']:>7.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--transport", dest="transports", action="append", choices=TRANSPORTS)
    parser.add_argument(
        "--asyncio", dest="uvloop", action="store_false", help="plain asyncio (default: uvloop)"
    )
    args = parser.parse_args()
    args.transports = args.transports or list(TRANSPORTS)
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
