"""Errors of the MCP client layer, importable without the `mcp` SDK."""

from __future__ import annotations


class McpError(Exception):
    """An MCP server could not be used (unreachable, refused, broken, too slow).

    Only `McpPool.list_tools` raises it (`call_tool` turns every such failure into an error
    result the model sees). `server_label` is the server's label, for the API's error message.
    """

    def __init__(self, message: str, *, server_label: str) -> None:
        super().__init__(message)
        self.message = message
        self.server_label = server_label


class McpUrlRefused(McpError):
    """A per-request server URL points somewhere the SSRF policy forbids (a loopback, private,
    link-local or metadata address): the request is at fault, not the server."""
