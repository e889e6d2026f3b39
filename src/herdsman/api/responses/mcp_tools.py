"""MCP tools of a Responses request: which servers, which of their tools the model sees, which
calls need the user's approval, and running the calls the gateway makes itself."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from herdsman.api.responses.items import Item, new_id
from herdsman.mcp import McpServer, McpToolSpecError, McpUrlRefused, RemoteServer
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.errors import InvalidRequest

if TYPE_CHECKING:
    from herdsman.mcp.pool import McpPool

# Past this many MCP calls in one response, the response ends incomplete (OpenAI's default).
DEFAULT_MAX_TOOL_CALLS = 10


@dataclass(slots=True)
class McpTools:
    """The MCP side of one request: tool name -> its server, what the model is told."""

    servers: dict[str, McpServer] = field(default_factory=dict)  # label -> server
    by_tool: dict[str, str] = field(default_factory=dict)  # tool name -> server label
    approval: dict[str, Any] = field(default_factory=dict)  # label -> require_approval
    listings: list[Item] = field(default_factory=list)  # mcp_list_tools output items
    chat_tools: list[dict[str, Any]] = field(default_factory=list)

    def needs_approval(self, label: str, tool: str) -> bool:
        policy = self.approval.get(label, "always")
        if policy in ("never", None):
            return False
        if policy == "always":
            return True
        if isinstance(policy, dict):
            never = (policy.get("never") or {}).get("tool_names") or []
            always = (policy.get("always") or {}).get("tool_names")
            if tool in never:
                return False
            return always is None or tool in always
        return True


def pool_of(ctx: ServingContext) -> McpPool:
    """This process's MCP sessions, made on first use."""
    if ctx.mcp is None:
        from herdsman.mcp.pool import McpPool

        ctx.mcp = McpPool(allow_private=ctx.mcp_allow_private)
    return ctx.mcp


def split_tools(
    ctx: ServingContext, tools: list[Any] | None
) -> tuple[list[Any] | None, list[tuple[int, dict[str, Any]]]]:
    """The request's tools without its MCP ones, and the MCP ones with their positions."""
    if not tools:
        return tools, []
    plain, mcp = [], []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            mcp.append((i, tool))
        else:
            plain.append(tool)
    return plain, mcp


def _server(ctx: ServingContext, index: int, tool: dict[str, Any]) -> McpServer:
    param = f"tools[{index}]"
    label = tool.get("server_label")
    if tool.get("server_url") is None and isinstance(label, str):
        configured = ctx.mcp_config.get(label) if ctx.mcp_config is not None else None
        if configured is None:
            raise InvalidRequest(
                f"'{param}': no server_url, and no MCP server '{label}' in --mcp-config", param
            )
        allowed = tool.get("allowed_tools")
        if isinstance(allowed, dict):
            allowed = allowed.get("tool_names")
        return configured.restricted(frozenset(allowed) if isinstance(allowed, list) else None)
    try:
        return RemoteServer.from_tool(tool, param=param)
    except McpToolSpecError as exc:
        raise InvalidRequest(str(exc), exc.param or param) from exc


async def resolve(ctx: ServingContext, specs: list[tuple[int, dict[str, Any]]]) -> McpTools:
    """List every MCP server's tools (concurrently); a server that cannot be listed becomes a
    failed ``mcp_list_tools`` item, and the model does not see its tools."""
    found = McpTools()
    if not specs:
        return found
    servers = []
    for index, spec in specs:
        server = _server(ctx, index, spec)
        if server.label in found.servers:
            raise InvalidRequest(f"two MCP tools have the server_label '{server.label}'", "tools")
        found.servers[server.label] = server
        found.approval[server.label] = spec.get("require_approval", "always")
        servers.append(server)
    pool = pool_of(ctx)
    listed = await asyncio.gather(*(pool.list_tools(s) for s in servers), return_exceptions=True)
    for server, tools in zip(servers, listed, strict=True):
        item: Item = {
            "id": new_id("mcpl"),
            "type": "mcp_list_tools",
            "server_label": server.label,
            "tools": [],
        }
        if isinstance(tools, BaseException):
            if isinstance(tools, McpUrlRefused):
                raise InvalidRequest(str(tools), "tools") from tools
            if not isinstance(tools, Exception):
                raise tools
            item["error"] = str(tools) or type(tools).__name__
            found.listings.append(item)
            continue
        for tool in tools:
            item["tools"].append(
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.input_schema,
                    "annotations": tool.annotations,
                }
            )
            if tool.name in found.by_tool:
                continue  # the first server offering a name keeps it
            found.by_tool[tool.name] = server.label
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            found.chat_tools.append({"type": "function", "function": function})
        found.listings.append(item)
    return found


async def call(ctx: ServingContext, tools: McpTools, item: Item) -> None:
    """Run one ``mcp_call`` item's call; its output or error lands in the item. A server that
    fails, hangs or answers garbage is a tool error the model sees, never a gateway error."""
    try:
        arguments = json.loads(item["arguments"] or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        item["error"] = "the arguments are not a JSON object"
        item["status"] = "failed"
        return
    server = tools.servers[item["server_label"]]
    result = await pool_of(ctx).call_tool(server, item["name"], arguments)
    if result.is_error:
        item["error"] = result.text
        item["status"] = "failed"
    else:
        item["output"] = result.text
        item["status"] = "completed"
