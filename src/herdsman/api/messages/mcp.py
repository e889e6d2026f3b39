"""MCP servers of a Messages request: Anthropic's MCP connector (beta ``mcp-client-2025-04-04``).

``mcp_servers: [{"type": "url", "url", "name", "authorization_token"?, "tool_configuration":
{"enabled"?, "allowed_tools"?}}]`` names servers the gateway reaches itself, through the pool it
shares with the Responses API (``pool_of``): their tools are listed (concurrently) and offered to
the model beside the request's own tools, and the model's calls of them are run here, between
generate turns (``service``). A ``name`` without a ``url`` may name a server of ``--mcp-config``
instead (herdsman's extension: Anthropic's shape always has a url).

A server that cannot be listed fails the request with a 400 naming it: Anthropic's blocks have no
place to say a listing failed, and answering without the tools the client asked for would hide
the failure. A call that fails (the server errs, hangs past its timeout, answers garbage) is an
``mcp_tool_result`` with ``is_error``, which the model sees.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from herdsman.api.messages.convert import invalid
from herdsman.api.responses.mcp_tools import pool_of
from herdsman.mcp import McpError, McpServer, McpUrlRefused, RemoteServer
from herdsman.pipeline.context import ServingContext

Json = dict[str, Any]

#: MCP calls one message may make; past it the calls are answered with an error, not run.
MAX_MCP_CALLS = 10


@dataclass(slots=True)
class McpServers:
    """The MCP side of one message: its servers, and which of them offers each tool."""

    servers: dict[str, McpServer] = field(default_factory=dict)  # name -> server
    by_tool: dict[str, str] = field(default_factory=dict)  # tool name -> server name
    chat_tools: list[Json] = field(default_factory=list)  # what the model is offered


def parse_servers(ctx: ServingContext, specs: list[Any] | None) -> list[tuple[int, McpServer]]:
    """The enabled servers of ``mcp_servers``, with their positions (for error messages)."""
    found: list[tuple[int, McpServer]] = []
    names: set[str] = set()
    for i, spec in enumerate(specs or ()):
        where = f"mcp_servers.{i}"
        if not isinstance(spec, dict):
            raise invalid(where, "each MCP server must be an object")
        if spec.get("type") != "url":
            raise invalid(f"{where}.type", "must be 'url'")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{where}.name", "must be a non-empty string")
        if name in names:
            raise invalid(f"{where}.name", f"two MCP servers are named {name!r}")
        names.add(name)
        enabled, allowed = _tool_configuration(spec.get("tool_configuration"), where)
        server = _server(ctx, spec, name, allowed, where)
        if enabled:
            found.append((i, server))
    return found


def _tool_configuration(config: Any, where: str) -> tuple[bool, frozenset[str] | None]:
    if config is None:
        return True, None
    where = f"{where}.tool_configuration"
    if not isinstance(config, dict):
        raise invalid(where, "must be an object")
    enabled = config.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise invalid(f"{where}.enabled", "must be a boolean")
    allowed = config.get("allowed_tools")
    if allowed is None:
        return enabled is not False, None
    if not isinstance(allowed, list) or not all(isinstance(n, str) and n for n in allowed):
        raise invalid(f"{where}.allowed_tools", "must be a list of tool names")
    return enabled is not False, frozenset(allowed)


def _server(
    ctx: ServingContext, spec: Json, name: str, allowed: frozenset[str] | None, where: str
) -> McpServer:
    url, token = spec.get("url"), spec.get("authorization_token")
    if url is None:
        configured = ctx.mcp_config.get(name) if ctx.mcp_config is not None else None
        if configured is None:
            raise invalid(f"{where}.url", "required (no --mcp-config server has this name)")
        if token is not None:
            # A configured server's session is shared by every request: it keeps the
            # operator's headers, and one request's credentials must not ride on it.
            raise invalid(
                f"{where}.authorization_token",
                f"not allowed without a url: the configured server {name!r} has its own headers",
            )
        return configured.restricted(allowed)
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}.url", "must be a non-empty string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise invalid(f"{where}.url", "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise invalid(f"{where}.url", f"must be an http:// or https:// URL (got {url!r})")
    if parts.username or parts.password:
        # They would be sent wherever the server redirects; authorization_token is for them.
        raise invalid(f"{where}.url", "must not carry credentials; use authorization_token")
    headers: tuple[tuple[str, str], ...] = ()
    if token is not None:
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise invalid(f"{where}.authorization_token", "must be a non-empty one-line string")
        headers = (("Authorization", f"Bearer {token}"),)
    return RemoteServer(
        label=name,
        url=url,
        # As for Responses tools: SSE servers conventionally serve on a path ending in /sse.
        transport="sse" if parts.path.rstrip("/").endswith("/sse") else "streamable_http",
        headers=headers,
        allowed_tools=allowed,
    )


async def resolve(ctx: ServingContext, specs: list[Any] | None, taken: set[str]) -> McpServers:
    """List the servers' tools (concurrently) and make chat tools of them. ``taken``: the
    request's own tool names, which keep their name (as the first server offering a name
    does): a chat template shows the model names only, so one name must mean one tool."""
    found = McpServers()
    servers = parse_servers(ctx, specs)
    if not servers:
        return found
    pool = pool_of(ctx)
    listed = await asyncio.gather(
        *(pool.list_tools(server) for _, server in servers), return_exceptions=True
    )
    names = set(taken)
    for (index, server), tools in zip(servers, listed, strict=True):
        if isinstance(tools, BaseException):
            if isinstance(tools, McpUrlRefused):
                raise invalid(f"mcp_servers.{index}.url", tools.message) from tools
            if isinstance(tools, McpError):
                raise invalid(f"mcp_servers.{index}", tools.message) from tools
            raise tools
        found.servers[server.label] = server
        for tool in tools:
            if tool.name in names:
                continue
            names.add(tool.name)
            found.by_tool[tool.name] = server.label
            function: Json = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            found.chat_tools.append({"type": "function", "function": function})
    return found


async def call(ctx: ServingContext, servers: McpServers, use: Json, *, valid: bool) -> Json:
    """Run one ``mcp_tool_use`` block's call: its ``mcp_tool_result`` block. ``valid``: the
    model's arguments parsed as a JSON object (if not, the call is not made). Every failure
    is an error result the model sees; the pool never raises for a call."""
    if not valid:
        return result_block(use["id"], "the tool input is not a JSON object", is_error=True)
    server = servers.servers[use["server_name"]]
    result = await pool_of(ctx).call_tool(server, use["name"], use["input"])
    return result_block(use["id"], result.text, is_error=result.is_error)


def result_block(tool_use_id: str, text: str, *, is_error: bool) -> Json:
    return {
        "type": "mcp_tool_result",
        "tool_use_id": tool_use_id,
        "is_error": is_error,
        # Anthropic refuses empty text blocks in requests: a tool that says nothing has none.
        "content": [{"type": "text", "text": text}] if text else [],
    }


def over_limit(use: Json) -> Json:
    return result_block(
        use["id"],
        f"not run: this message reached its limit of {MAX_MCP_CALLS} MCP tool calls",
        is_error=True,
    )
