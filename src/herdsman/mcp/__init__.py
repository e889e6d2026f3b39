"""The MCP client layer: servers from `--mcp-config` or named by a request, reached through a
pool of shared sessions (`McpPool`).

The pool and its result types load on first use: they import the `mcp` SDK, which takes about
a second, and a gateway without MCP servers (or the CLI checking a config file) should not pay
for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import (
    McpConfig,
    McpConfigError,
    McpServer,
    McpToolSpecError,
    RemoteServer,
    ServerConfig,
    load_mcp_config,
    parse_mcp_config,
)
from .errors import McpError, McpUrlRefused

if TYPE_CHECKING:
    from .pool import McpPool, Tool, ToolResult

__all__ = [
    "McpConfig",
    "McpConfigError",
    "McpError",
    "McpPool",
    "McpServer",
    "McpToolSpecError",
    "McpUrlRefused",
    "RemoteServer",
    "ServerConfig",
    "Tool",
    "ToolResult",
    "load_mcp_config",
    "parse_mcp_config",
]


def __getattr__(name: str) -> Any:
    if name in ("McpPool", "Tool", "ToolResult"):
        from . import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
