"""McpPool against real MCP servers (tests/mcp/mcp_app.py, the SDK's MCPServer) run as real
processes: stdio servers spawned by the pool, SSE and streamable HTTP servers on 127.0.0.1.

What reached a server is read from its log (one line per request, see mcp_app.py): a client
session opens with one `server/discover`, so counting those counts sessions. Nothing waits a
fixed time; conditions are polled under generous deadlines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from herdsman.mcp import (
    McpError,
    McpPool,
    McpUrlRefused,
    RemoteServer,
    ServerConfig,
    ToolResult,
)
from herdsman.mcp.net import fetch_policy, pinned_http_client

APP = Path(__file__).with_name("mcp_app.py")
# A second server process starts while the suite's other worker may be running vLLM on every
# core: the pool's 30 s default once ran out there (a 1 s start alone). A hang still fails.
RESTART_DEADLINE_S = 120.0
DEADLINE_S = 60.0
HTTP_TRANSPORTS = ("sse", "streamable_http")
TRANSPORTS = ("stdio", *HTTP_TRANSPORTS)
PATHS = {"sse": "/sse", "streamable_http": "/mcp"}


# -- servers -------------------------------------------------------------------------------


@dataclass
class HttpServer:
    transport: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + PATHS[self.transport]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def start_http_server(transport: str, workdir: Path, port: int = 0) -> HttpServer:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{transport}.port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"{transport}.log"
    process = subprocess.Popen(
        [sys.executable, str(APP), transport, "--port-file", str(port_file), "--log", str(log)]
        + (["--port", str(port)] if port else [])
    )

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the {transport} server exited with {process.returncode}")
        return port_file.exists()

    wait_until(listening, f"the {transport} server's port")
    server = HttpServer(transport, int(port_file.read_text()), log, process)

    def healthy() -> bool:
        try:
            return httpx2.get(server.base + "/health", timeout=5).status_code == 200
        except httpx2.HTTPError:
            return False

    wait_until(healthy, f"the {transport} server to answer")
    return server


@pytest.fixture(scope="module")
def http_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HttpServer]]:
    workdir = tmp_path_factory.mktemp("mcp-http")
    servers: dict[str, HttpServer] = {}
    try:
        for transport in HTTP_TRANSPORTS:
            servers[transport] = start_http_server(transport, workdir)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def stdio_server(
    log: Path, label: str = "stdio", allowed_tools: frozenset[str] | None = None
) -> ServerConfig:
    return ServerConfig(
        label=label,
        transport="stdio",
        command=sys.executable,
        args=(str(APP), "stdio", "--log", str(log)),
        allowed_tools=allowed_tools,
    )


def http_server(
    transport: str, url: str, allowed_tools: frozenset[str] | None = None
) -> ServerConfig:
    assert transport in HTTP_TRANSPORTS
    return ServerConfig(
        label=transport,
        transport="sse" if transport == "sse" else "streamable_http",
        url=url,
        headers=(("x-test", "herdsman"),),
        allowed_tools=allowed_tools,
    )


def configured(
    transport: str,
    tmp_path: Path,
    http_servers: dict[str, HttpServer],
    allowed_tools: frozenset[str] | None = None,
) -> tuple[ServerConfig, Path]:
    """A configured server of `transport` and the log its requests land in."""
    if transport == "stdio":
        log = tmp_path / "stdio.log"
        return stdio_server(log, allowed_tools=allowed_tools), log
    server = http_servers[transport]
    return http_server(transport, server.url, allowed_tools), server.log


def events(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line]


def count(log: Path, event: str, name: str | None = None) -> int:
    return sum(1 for e in events(log) if e[1] == event and (name is None or e[2] == name))


def sessions(log: Path) -> int:
    return count(log, "server/discover") + count(log, "initialize")


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def pid_of(pool: McpPool, server: ServerConfig) -> int:
    result = await pool.call_tool(server, "pid", {})
    assert not result.is_error, result.text
    return int(result.text)


# -- listing and calling -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_and_call(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(transport, tmp_path, http_servers)
    async with McpPool() as pool:
        tools = {t.name: t for t in await pool.list_tools(server)}
        assert {"add", "echo", "slow", "fail", "crash", "pid"} <= set(tools)
        assert tools["add"].description == "Add two integers."
        assert tools["add"].input_schema["type"] == "object"
        assert set(tools["add"].input_schema["properties"]) == {"a", "b"}

        assert await pool.call_tool(server, "add", {"a": 2, "b": 3}) == ToolResult("5", False)
        result = await pool.call_tool(server, "echo", {"text": "héllo\nworld"})
        assert (result.text, result.is_error) == ("héllo\nworld", False)

        failed = await pool.call_tool(server, "fail", {})
        assert failed.is_error and "fail" in failed.text
        unknown = await pool.call_tool(server, "no_such_tool", {})
        assert unknown.is_error and "no_such_tool" in unknown.text
        bad_args = await pool.call_tool(server, "add", {"a": "x"})
        assert bad_args.is_error
    if transport != "stdio":
        # The configured headers reach the server on every request.
        calls = [e for e in events(log) if e[1] == "tools/call" and e[2] == "echo"]
        assert calls and all(e[3] == "herdsman" for e in calls)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_allowed_tools_filter(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(
        transport, tmp_path, http_servers, allowed_tools=frozenset({"add", "echo"})
    )
    calls_of_pid = count(log, "tools/call", "pid")
    async with McpPool() as pool:
        assert sorted(t.name for t in await pool.list_tools(server)) == ["add", "echo"]
        refused = await pool.call_tool(server, "pid", {})
        assert refused.is_error and "not allowed" in refused.text
        assert (await pool.call_tool(server, "add", {"a": 1, "b": 1})).text == "2"
        # A request may narrow the set further; the session stays the same.
        narrowed = server.restricted(frozenset({"echo", "pid"}))
        assert [t.name for t in await pool.list_tools(narrowed)] == ["echo"]
    assert count(log, "tools/call", "pid") == calls_of_pid  # never reached the server


async def test_tool_list_cached_within_ttl(
    tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured("streamable_http", tmp_path, http_servers)
    before = count(log, "tools/list")
    async with McpPool(tools_ttl_s=3600) as pool:
        first = await pool.list_tools(server)
        second = await pool.list_tools(server)
        assert first == second
        assert count(log, "tools/list") == before + 1
        # Concurrent misses (another pool, cold) share one tools/list too.
    async with McpPool() as pool:
        listings = await asyncio.gather(*(pool.list_tools(server) for _ in range(5)))
        assert all(listing == first for listing in listings)
        assert count(log, "tools/list") == before + 2
    async with McpPool(tools_ttl_s=0) as pool:  # expired at once: every list asks
        await pool.list_tools(server)
        await pool.list_tools(server)
        assert count(log, "tools/list") == before + 4


# -- sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_concurrent_first_calls_share_one_session(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(transport, tmp_path, http_servers)
    before = sessions(log)
    token = f"{transport}-{os.getpid()}-{time.monotonic_ns()}"
    async with McpPool() as pool:
        # Each call returns only once all 6 are inside the server at the same moment, so
        # this passes only if one session carries 6 requests concurrently.
        results = await asyncio.gather(
            *(pool.call_tool(server, "barrier", {"token": token, "n": 6}) for _ in range(6))
        )
        assert [r.text for r in results] == ["6 together"] * 6
        assert pool.session_count == 1
    assert sessions(log) == before + 1
    if transport == "stdio":
        assert count(log, "start") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_session_reused_across_calls(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(transport, tmp_path, http_servers)
    before = sessions(log)
    async with McpPool() as pool:
        await pool.list_tools(server)
        for i in range(10):
            assert (await pool.call_tool(server, "add", {"a": i, "b": 1})).text == str(i + 1)
        assert len({await pid_of(pool, server) for _ in range(3)}) == 1
    assert sessions(log) == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeout_is_an_error_result_and_the_session_survives(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(transport, tmp_path, http_servers)
    before = sessions(log)
    async with McpPool() as pool:
        await pool.list_tools(server)  # connected: the timeout hits the call itself
        result = await pool.call_tool(server, "slow", {"seconds": 600}, timeout_s=1.0)
        assert result.is_error
        assert "did not answer tool 'slow' within 1s" in result.text
        assert (await pool.call_tool(server, "add", {"a": 1, "b": 2})).text == "3"
    assert sessions(log) == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelled_caller_leaves_the_shared_session_alone(
    transport: str, tmp_path: Path, http_servers: dict[str, HttpServer]
) -> None:
    server, log = configured(transport, tmp_path, http_servers)
    before_sessions = sessions(log)
    before_slow = count(log, "slow-started")
    async with McpPool() as pool:
        await pool.list_tools(server)
        task = asyncio.create_task(pool.call_tool(server, "slow", {"seconds": 600}))
        await until(lambda: count(log, "slow-started") > before_slow, "the slow call to start")
        task.cancel()  # as when a client disconnects mid-request
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await pool.call_tool(server, "echo", {"text": "still here"})).text == "still here"
    assert sessions(log) == before_sessions + 1


async def test_crashed_stdio_server_is_an_error_then_reconnects(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "stdio.log")
    async with McpPool(connect_timeout_s=RESTART_DEADLINE_S) as pool:
        first = await pid_of(pool, server)
        crashed = await pool.call_tool(server, "crash", {})
        assert crashed.is_error
        assert "closed the connection" in crashed.text
        second = await pid_of(pool, server)  # a new process, transparently
        assert second != first
        assert (await pool.call_tool(server, "add", {"a": 2, "b": 2})).text == "4"


async def test_stdio_server_killed_while_idle_is_replaced(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "stdio.log")
    async with McpPool(connect_timeout_s=RESTART_DEADLINE_S) as pool:
        first = await pid_of(pool, server)
        os.kill(first, signal.SIGKILL)
        await until(lambda: process_gone(first), "the server to die")
        # The pooled session is dead; the call reconnects and retries without an error.
        second = await pid_of(pool, server)
        assert second != first


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_restarted_http_server_is_reconnected(transport: str, tmp_path: Path) -> None:
    old = start_http_server(transport, tmp_path / "old")
    try:
        server = http_server(transport, old.url)
        async with McpPool() as pool:
            first = await pid_of(pool, server)
            old.stop()
            new = start_http_server(transport, tmp_path / "new", port=old.port)
            try:
                second = await pid_of(pool, server)
                assert second == new.process.pid != first
            finally:
                new.stop()
    finally:
        old.stop()


async def test_lru_bound_closes_the_least_recently_used_session(tmp_path: Path) -> None:
    a = stdio_server(tmp_path / "a.log", label="a")
    b = stdio_server(tmp_path / "b.log", label="b")
    async with McpPool(max_sessions=1) as pool:
        pid_a = await pid_of(pool, a)
        pid_b = await pid_of(pool, b)  # evicts a: its server is stopped
        await until(lambda: process_gone(pid_a), "the evicted server to exit")
        assert pool.session_count == 1
        assert await pid_of(pool, b) == pid_b
        assert await pid_of(pool, a) not in (pid_a, pid_b)
        await until(lambda: process_gone(pid_b), "the evicted server to exit")


async def test_aclose_stops_servers(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "stdio.log")
    pool = McpPool()
    pid = await pid_of(pool, server)
    await pool.aclose()
    assert process_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.call_tool(server, "pid", {})


# -- unusable servers ----------------------------------------------------------------------


async def test_unreachable_servers(tmp_path: Path, http_servers: dict[str, HttpServer]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = [
        ServerConfig(label="down", transport="streamable_http", url=f"http://127.0.0.1:{port}/mcp"),
        ServerConfig(label="down-sse", transport="sse", url=f"http://127.0.0.1:{port}/sse"),
        ServerConfig(label="nocmd", transport="stdio", command=str(tmp_path / "no-such-binary")),
    ]
    async with McpPool() as pool:
        for server in unreachable:
            result = await pool.call_tool(server, "add", {"a": 1, "b": 2})
            assert result.is_error
            assert f"MCP server {server.label!r} failed to connect" in result.text
            with pytest.raises(McpError, match="failed to connect") as info:
                await pool.list_tools(server)
            assert info.value.server_label == server.label
        # Failures are not cached as sessions: a working server afterwards is unaffected.
        ok = ServerConfig(
            label="ok", transport="streamable_http", url=http_servers["streamable_http"].url
        )
        assert (await pool.call_tool(ok, "add", {"a": 1, "b": 2})).text == "3"


@pytest.mark.parametrize("path", ["/junk-html", "/junk-rpc"])
async def test_garbage_speaking_server_is_an_error(
    path: str, http_servers: dict[str, HttpServer]
) -> None:
    server = ServerConfig(
        label="junk",
        transport="streamable_http",
        url=http_servers["streamable_http"].base + path,
        timeout_s=30,
    )
    async with McpPool() as pool:
        result = await pool.call_tool(server, "add", {"a": 1, "b": 2})
        assert result.is_error and "MCP server 'junk' failed to connect" in result.text
        with pytest.raises(McpError):
            await pool.list_tools(server)


# -- per-request servers and SSRF ----------------------------------------------------------


async def test_private_urls_refused_unless_allowed(http_servers: dict[str, HttpServer]) -> None:
    http = http_servers["streamable_http"]
    remote = RemoteServer.from_tool(
        {
            "type": "mcp",
            "server_label": "mine",
            "server_url": http.url,
            "headers": {"x-test": "remote"},
        }
    )
    localhost = RemoteServer(label="lh", url=f"http://localhost:{http.port}/mcp")
    before = sessions(http.log)
    async with McpPool() as pool:
        for server in (remote, localhost):
            result = await pool.call_tool(server, "add", {"a": 1, "b": 2})
            assert result.is_error
            assert "loopback address" in result.text and "refused" in result.text
            with pytest.raises(McpUrlRefused, match="loopback"):
                await pool.list_tools(server)
    assert sessions(http.log) == before  # nothing was sent

    async with McpPool(allow_private=True) as pool:
        assert (await pool.call_tool(remote, "add", {"a": 1, "b": 2})).text == "3"
        assert [e[3] for e in events(http.log) if e[1] == "tools/call"][-1] == "remote"
        # Metadata addresses stay refused even then (no connection is attempted).
        metadata = RemoteServer(label="md", url="http://169.254.169.254/mcp")
        result = await pool.call_tool(metadata, "add", {"a": 1, "b": 2})
        assert result.is_error and "metadata" in result.text


async def test_remote_sessions_keyed_by_url_and_headers(
    http_servers: dict[str, HttpServer],
) -> None:
    http = http_servers["sse"]

    def remote(label: str, key: str) -> RemoteServer:
        return RemoteServer.from_tool(
            {"server_label": label, "server_url": http.url, "headers": {"x-test": key}}
        )

    before = sessions(http.log)
    async with McpPool(allow_private=True) as pool:
        await pool.call_tool(remote("a", "one"), "add", {"a": 1, "b": 1})
        await pool.call_tool(remote("b", "one"), "add", {"a": 1, "b": 1})  # same session
        assert sessions(http.log) == before + 1
        await pool.call_tool(remote("a", "two"), "add", {"a": 1, "b": 1})  # other credentials
        assert sessions(http.log) == before + 2
        assert pool.session_count == 2


async def test_pinned_client_checks_every_connection(http_servers: dict[str, HttpServer]) -> None:
    """The check inside the HTTP client itself (what stops DNS rebinding after check_url)."""
    url = http_servers["streamable_http"].base + "/health"
    async with pinned_http_client(fetch_policy(allow_private=False)) as client:
        with pytest.raises(httpx2.ConnectError, match="loopback address"):
            await client.get(url)
    async with pinned_http_client(fetch_policy(allow_private=True)) as client:
        assert (await client.get(url)).text == "ok"


async def test_pre_2026_server_falls_back_to_the_handshake(tmp_path: Path) -> None:
    """A server of the 2025 protocol answers `server/discover` with Method not found; the
    session then opens with `initialize`, and works."""
    log = tmp_path / "legacy.log"
    server = ServerConfig(
        label="legacy",
        transport="stdio",
        command=sys.executable,
        args=(str(APP.with_name("legacy_app.py")), str(log)),
    )
    async with McpPool() as pool:
        assert [t.name for t in await pool.list_tools(server)] == ["add"]
        assert await pool.call_tool(server, "add", {"a": 2, "b": 5}) == ToolResult("7", False)
        missing = await pool.call_tool(server, "nope", {})
        assert missing.is_error and "Method not found" in missing.text
    methods = [e[1] for e in events(log)]
    assert methods[:3] == ["server/discover", "initialize", "notifications/initialized"]
