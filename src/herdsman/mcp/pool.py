"""`McpPool`: pooled MCP client sessions, shared by every request of a gateway process.

Each session lives in a background task the pool owns (`_Session._run`). The SDK's transports
and `Client` are anyio async context managers: their task groups and cancel scopes must be
entered and exited by one task, and whatever is cancelled inside them is torn down. Entering
them in a request's task would tie a shared session to that request (its cancellation, or its
exit from the context, would close the session under every other request), and exiting them
from another task fails anyio's cancel-scope checks. So a dedicated task enters the context,
publishes the session, and waits to be told to close; requests only send messages through the
session (the SDK multiplexes concurrent requests on it), and cancelling a request abandons
just its own call (the SDK sends the server a `notifications/cancelled`).

Failures are values, not exceptions: `call_tool` returns `ToolResult(is_error=True)` for an
unreachable, refused, crashed, hung or misbehaving server, so the model sees what went wrong.
`list_tools` raises `McpError` (the API layer decides how a request fails when it cannot even
learn the tools).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import anyio
import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client import Transport
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

import herdsman

from .config import McpServer, RemoteServer
from .errors import McpError, McpUrlRefused
from .net import check_url, fetch_policy, pinned_http_client

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: tools/list pages followed before giving up (a server whose cursor never ends cannot hang us)
_MAX_TOOL_PAGES = 100
#: how long `aclose` lets sessions shut down (a stdio server gets up to ~4 s from the SDK to
#: exit after its stdin closes, then is killed) before cancelling what is left
_CLOSE_GRACE_S = 10.0
# The HTTP timeouts of the SDK's own defaults (30 s per operation, 5 min between SSE events),
# except that connecting must also fit the pool's connect timeout.
_HTTP_READ_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None
    #: the tool's JSON Schema for its arguments (an object schema)
    input_schema: dict[str, Any]
    #: MCP tool annotations (readOnlyHint, ...), camelCase as on the wire; None if absent
    annotations: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    #: the text blocks of the result joined by newlines (other blocks summarised); for a
    #: failure, what went wrong
    text: str
    is_error: bool = False


class _Session:
    """One pooled connection to one server; its transport lives in `task` (see module doc)."""

    def __init__(self, pool: McpPool, server: McpServer) -> None:
        self.server = server
        self.key = server.key
        self.session: ClientSession | None = None
        self.error: McpError | None = None
        #: set once connecting has succeeded or failed
        self.settled = asyncio.Event()
        #: when it became usable (monotonic); None while connecting or if it never did
        self.connected_at: float | None = None
        #: no new calls may start on it: it failed, or was evicted or closed
        self.dead = False
        self.in_flight = 0
        self._stop = asyncio.Event()
        self._pool = pool
        # A fresh context: the session outlives the request that happened to open it and must
        # not carry that request's context variables (tracing spans, request ids) around.
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"mcp-session:{server.label}", context=contextvars.Context()
        )

    def close(self, *, now: bool = False) -> None:
        """No new calls; the transport closes once calls in flight are done (or `now`: calls
        in flight then fail with CONNECTION_CLOSED)."""
        self.dead = True
        if now or self.in_flight == 0:
            self._stop.set()

    def release(self) -> None:
        self.in_flight -= 1
        if self.dead and self.in_flight == 0:
            self._stop.set()

    async def _run(self) -> None:
        label = self.server.label
        timeout = self._pool.connect_timeout_s
        try:
            # The deadline bounds connecting only; it is lifted once the session is up. A
            # scope around `__aenter__` alone would be exited before the task groups entered
            # inside it, which anyio forbids.
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                if isinstance(self.server, RemoteServer):
                    await check_url(self.server.url, self._pool._policy, server_label=label)
                client = Client(
                    self._pool._transport(self.server),
                    mode="auto",  # server/discover (2026-07-28 servers), else initialize
                    cache=None,  # the pool caches tool lists itself, with its own TTL
                    client_info=types.Implementation(name="herdsman", version=herdsman.__version__),
                    message_handler=self._on_message,
                )
                async with client:
                    scope.deadline = math.inf
                    self.session = client.session
                    self.connected_at = time.monotonic()
                    self.settled.set()
                    await self._stop.wait()
            if scope.cancelled_caught and self.session is None:
                self.error = McpError(
                    f"MCP server {label!r} did not connect within {timeout:g}s", server_label=label
                )
        except McpUrlRefused as exc:
            self.error = exc
        except Exception as exc:
            if self.session is None:
                self.error = McpError(
                    f"MCP server {label!r} failed to connect: {_describe(exc)}", server_label=label
                )
            else:
                self.error = McpError(
                    f"the connection to MCP server {label!r} failed: {_describe(exc)}",
                    server_label=label,
                )
                logger.info("MCP session %r ended: %s", label, _describe(exc))
        finally:
            self.dead = True
            self.session = None
            if self.error is None and self.connected_at is None:
                self.error = McpError(f"MCP server {label!r} closed", server_label=label)
            self.settled.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._pool._tools.pop(self.key, None)
        elif isinstance(message, Exception):
            # A line of garbage on a stdio server's stdout, say: the request it was meant to
            # answer times out; the session itself is still usable.
            logger.debug("MCP server %r sent something unparseable: %r", self.server.label, message)


@dataclass(slots=True)
class _Listing:
    tools: list[Tool]
    expires: float


class McpPool:
    """MCP sessions shared by all requests of one event loop.

    `allow_private` lets per-request (`RemoteServer`) URLs reach loopback and private
    addresses (cloud metadata addresses stay refused); configured servers are never checked.
    At most `max_sessions` sessions are pooled (least recently used first out); tool lists are
    cached `tools_ttl_s` seconds per server.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_sessions: int = 64,
        tools_ttl_s: float = 60.0,
        connect_timeout_s: float = 30.0,
        stdio_errlog: TextIO | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.tools_ttl_s = tools_ttl_s
        self.connect_timeout_s = connect_timeout_s
        self._policy = fetch_policy(allow_private)
        self._stdio_errlog = stdio_errlog
        self._sessions: OrderedDict[Any, _Session] = OrderedDict()
        # Every session whose task has not finished, evicted ones included, for aclose.
        self._live: set[_Session] = set()
        self._tools: dict[Any, _Listing] = {}
        self._listings: dict[Any, asyncio.Task[list[Tool]]] = {}
        self._closed = False

    async def __aenter__(self) -> McpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def session_count(self) -> int:
        """Sessions pooled now (connecting or connected)."""
        return sum(1 for s in self._sessions.values() if not s.dead)

    async def list_tools(self, server: McpServer) -> list[Tool]:
        """The server's tools that `server.allowed_tools` lets through (all if None).

        Cached per server for `tools_ttl_s`; concurrent misses share one tools/list. Raises
        McpError (McpUrlRefused for an SSRF refusal) if the server cannot be listed within
        `server.timeout_s`.
        """
        self._check_open()
        listing = self._tools.get(server.key)
        if listing is None or listing.expires <= time.monotonic():
            task = self._listings.get(server.key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._list(server))
                task.add_done_callback(self._listing_done(server.key))
                self._listings[server.key] = task
            # Shielded: a request giving up must not cancel the listing others wait for.
            tools = await asyncio.shield(task)
        else:
            tools = listing.tools
        allowed = server.allowed_tools
        return [t for t in tools if allowed is None or t.name in allowed]

    async def call_tool(
        self,
        server: McpServer,
        name: str,
        arguments: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> ToolResult:
        """Call tool `name`; every failure (connecting included) is an `is_error` result.

        `timeout_s` (default: `server.timeout_s`) bounds the whole call, waiting for a
        connection included; past it the server is told to cancel the call.
        """
        self._check_open()
        label = server.label
        if server.allowed_tools is not None and name not in server.allowed_tools:
            return ToolResult(f"tool {name!r} is not allowed on MCP server {label!r}", True)
        timeout = server.timeout_s if timeout_s is None else timeout_s
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=name, arguments=arguments or {})
        )

        async def call(session: ClientSession) -> types.CallToolResult:
            # send_request, not session.call_tool: the latter validates structured results
            # against output schemas and so sends an uncached tools/list on a session's first
            # call of each tool. The model gets text; the schema check buys it nothing.
            return await session.send_request(request, types.CallToolResult)

        try:
            with anyio.move_on_after(timeout):
                result = await self._with_session(server, call)
                return ToolResult(_result_text(result), result.is_error)
            return ToolResult(
                f"MCP server {label!r} did not answer tool {name!r} within {timeout:g}s", True
            )
        except McpError as exc:
            return ToolResult(exc.message, True)
        except MCPError as exc:
            return ToolResult(
                f"MCP server {label!r} refused tool {name!r}: {exc.message} (error {exc.code})",
                True,
            )
        except ValidationError as exc:
            return ToolResult(
                f"MCP server {label!r} sent an invalid result for tool {name!r}: "
                f"{exc.error_count()} validation errors, first: {exc.errors()[0]['msg']}",
                True,
            )

    async def aclose(self) -> None:
        """Close every session (stdio servers are stopped) and forget cached tool lists."""
        self._closed = True
        # Listings in progress are not cancelled (their waiters would get a CancelledError
        # they did not ask for): with the sessions closed they fail soon with an McpError.
        for session in self._live:
            session.close(now=True)
        self._sessions.clear()
        self._tools.clear()
        tasks = [s.task for s in self._live] + list(self._listings.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_CLOSE_GRACE_S)

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("McpPool is closed")

    def _listing_done(self, key: Any) -> Callable[[asyncio.Task[list[Tool]]], None]:
        def done(task: asyncio.Task[list[Tool]]) -> None:
            if self._listings.get(key) is task:
                del self._listings[key]
            # Retrieved here so that a failure nobody awaited any more is not logged as
            # "never retrieved"; awaiting callers get it anyway.
            if not task.cancelled() and task.exception() is None:
                self._tools[key] = _Listing(task.result(), time.monotonic() + self.tools_ttl_s)

        return done

    async def _list(self, server: McpServer) -> list[Tool]:
        async def list_all(session: ClientSession) -> list[Tool]:
            tools: list[Tool] = []
            cursor: str | None = None
            for _ in range(_MAX_TOOL_PAGES):
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                tools.extend(
                    Tool(
                        name=t.name,
                        description=t.description,
                        input_schema=t.input_schema,
                        annotations=(
                            t.annotations.model_dump(by_alias=True, exclude_none=True)
                            if t.annotations is not None
                            else None
                        ),
                    )
                    for t in page.tools
                )
                cursor = page.next_cursor
                if not cursor:
                    return tools
            raise McpError(
                f"MCP server {server.label!r} lists more than {_MAX_TOOL_PAGES} pages of tools",
                server_label=server.label,
            )

        label = server.label
        try:
            with anyio.move_on_after(server.timeout_s):
                return await self._with_session(server, list_all)
        except MCPError as exc:
            raise McpError(
                f"MCP server {label!r} refused to list its tools: {exc.message} (error {exc.code})",
                server_label=label,
            ) from None
        except ValidationError as exc:
            raise McpError(
                f"MCP server {label!r} sent an invalid tool list: {exc.errors()[0]['msg']}",
                server_label=label,
            ) from None
        raise McpError(
            f"MCP server {label!r} did not list its tools within {server.timeout_s:g}s",
            server_label=label,
        )

    def _acquire(self, server: McpServer) -> _Session:
        """The pooled session of `server`, opening one if there is none (synchronously, so
        that concurrent first uses all find the one the first of them opened)."""
        if self._closed:
            # A call in flight when the pool closed must not open a session nobody closes.
            raise McpError("the MCP pool is closed", server_label=server.label)
        key = server.key
        session = self._sessions.get(key)
        if session is not None and not session.dead:
            self._sessions.move_to_end(key)
            return session
        if session is not None:
            del self._sessions[key]
        session = _Session(self, server)
        self._live.add(session)
        session.task.add_done_callback(lambda _task: self._live.discard(session))
        self._sessions[key] = session
        while len(self._sessions) > self.max_sessions:
            _key, lru = self._sessions.popitem(last=False)
            lru.close()
        return session

    def _discard(self, session: _Session) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        session.close()

    async def _with_session(
        self, server: McpServer, op: Callable[[ClientSession], Awaitable[T]]
    ) -> T:
        """`op` on the server's session. If the session turns out dead (the server exited or
        dropped the connection), a new one is opened and `op` retried once, provided the dead
        one predates this call: a session that dies as soon as it is opened means a broken
        server, which a retry would only start again.

        A retried tool call may run twice if the server died after starting it: tool calls
        over a lost connection are at-least-once, as the transport cannot say how far it got.
        """
        started = time.monotonic()
        for attempt in (0, 1):
            session = self._acquire(server)
            await session.settled.wait()
            if session.connected_at is None:
                assert session.error is not None
                raise session.error
            if session.dead or session.session is None:
                continue  # closed between connecting and now (evicted, say)
            session.in_flight += 1
            try:
                return await op(session.session)
            except (MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                if not _is_connection_loss(exc):
                    raise
                self._discard(session)
                reused = session.connected_at is not None and session.connected_at < started
                if attempt == 0 and reused:
                    logger.info("MCP session %r was lost; reconnecting", server.label)
                    continue
                detail = f": {session.error.message}" if session.error is not None else ""
                raise McpError(
                    f"MCP server {server.label!r} closed the connection (it exited or dropped "
                    f"it){detail}",
                    server_label=server.label,
                ) from None
            finally:
                session.release()
        raise McpError(f"MCP server {server.label!r}: no usable session", server_label=server.label)

    def _transport(self, server: McpServer) -> Transport:
        if server.transport == "stdio":
            assert server.command is not None  # ServerConfig guarantees it for stdio
            params = StdioServerParameters(
                command=server.command,
                args=list(server.args),
                env=dict(server.env) if server.env is not None else None,
                cwd=server.cwd,
            )
            return stdio_client(params, errlog=self._stdio_errlog or sys.stderr)
        assert server.url is not None
        headers = dict(server.headers) or None
        remote = isinstance(server, RemoteServer)
        timeout = httpx2.Timeout(min(30.0, self.connect_timeout_s), read=_HTTP_READ_TIMEOUT_S)

        def http_client(
            headers: dict[str, str] | None = headers,
            timeout: httpx2.Timeout | None = timeout,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            if remote:
                return pinned_http_client(self._policy, headers=headers, timeout=timeout)
            return create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)

        if server.transport == "sse":
            return sse_client(
                server.url,
                headers=headers,
                timeout=timeout.connect or 30.0,
                sse_read_timeout=_HTTP_READ_TIMEOUT_S,
                httpx_client_factory=http_client,
            )
        return _streamable_http(server.url, http_client())


@asynccontextmanager
async def _streamable_http(url: str, client: httpx2.AsyncClient) -> AsyncIterator[tuple[Any, Any]]:
    # streamable_http_client leaves a client it is given open; this one is ours to close.
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _is_connection_loss(exc: BaseException) -> bool:
    if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError):
        return True
    if isinstance(exc, MCPError):
        if exc.code == types.CONNECTION_CLOSED:
            return True
        # Streamable HTTP: a 404 on a session the server no longer knows (it restarted, or
        # expired the session). The request was not run; a new session will take it.
        return exc.code == types.INVALID_REQUEST and exc.message == "Session terminated"
    return False


def _describe(exc: BaseException) -> str:
    """The first real error inside `exc` (transports raise exception groups)."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (leaves or list(exc.exceptions))[0]
    if isinstance(exc, MCPError):
        return f"{exc.message} (error {exc.code})"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _result_text(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri} ({resource.mime_type or '?'})]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        elif isinstance(block, types.ImageContent | types.AudioContent):
            parts.append(f"[{block.type} ({block.mime_type}), not shown]")
    if not parts and result.structured_content is not None:
        # A tool that returns only structured content still says something to the model.
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)
