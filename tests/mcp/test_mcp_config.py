"""`--mcp-config` validation and the Responses API's `{"type": "mcp"}` tool, parsed into the
server specs the pool takes. (No __init__.py in tests/mcp: as a package this directory would
be importable as `mcp` and shadow the SDK.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from herdsman.mcp import (
    McpConfigError,
    McpToolSpecError,
    RemoteServer,
    ServerConfig,
    load_mcp_config,
    parse_mcp_config,
)


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_loads_every_transport(tmp_path: Path) -> None:
    config = load_mcp_config(
        write(
            tmp_path,
            {
                "servers": {
                    "files": {
                        "transport": "stdio",
                        "command": "mcp-files",
                        "args": ["--root", "/srv"],
                        "env": {"TOKEN": "t"},
                        "cwd": "/tmp",
                        "allowed_tools": ["read"],
                        "timeout_s": 5,
                    },
                    "wiki": {"transport": "sse", "url": "https://wiki.example/sse"},
                    "search": {
                        "transport": "streamable_http",
                        "url": "https://search.example/mcp",
                        "headers": {"Authorization": "Bearer x", "A": "1"},
                        "allowed_tools": None,
                    },
                }
            },
        )
    )
    files = config.servers["files"]
    assert files == ServerConfig(
        label="files",
        transport="stdio",
        command="mcp-files",
        args=("--root", "/srv"),
        env=(("TOKEN", "t"),),
        cwd="/tmp",
        allowed_tools=frozenset({"read"}),
        timeout_s=5.0,
    )
    assert config.get("wiki") == ServerConfig(
        label="wiki", transport="sse", url="https://wiki.example/sse"
    )
    search = config.servers["search"]
    assert search.headers == (("A", "1"), ("Authorization", "Bearer x"))
    assert search.allowed_tools is None
    assert config.get("nope") is None
    # The key is the label: a request narrowing the tools still uses the operator's session.
    narrowed = files.restricted(frozenset({"read", "write"}))
    assert narrowed.allowed_tools == frozenset({"read"})
    assert narrowed.key == files.key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the top level must be an object"),
        ({"servers": [], "x": 1}, "x: unknown key"),
        ({"servers": []}, "servers: must be an object"),
        ({"servers": {"a": "x"}}, "servers.a: must be an object"),
        ({"servers": {"a": {}}}, "servers.a.transport: must be one of stdio, sse"),
        ({"servers": {"a": {"transport": "ws"}}}, "servers.a.transport: must be one of"),
        ({"servers": {"a": {"transport": "stdio"}}}, "servers.a.command: required for stdio"),
        (
            {"servers": {"a": {"transport": "stdio", "command": "x", "args": "y"}}},
            "servers.a.args: must be a list of strings",
        ),
        (
            {"servers": {"a": {"transport": "stdio", "command": "x", "env": {"K": 1}}}},
            "servers.a.env: must be an object of string values",
        ),
        (
            {"servers": {"a": {"transport": "stdio", "command": "x", "url": "http://h/"}}},
            "servers.a.url: not a key of a stdio server",
        ),
        ({"servers": {"a": {"transport": "sse"}}}, "servers.a.url: required for sse"),
        (
            {"servers": {"a": {"transport": "sse", "url": "ftp://h/x"}}},
            "servers.a.url: must be an http:// or https:// URL",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://u:p@h/x"}}},
            "servers.a.url: must not carry credentials",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h:99999/x"}}},
            "servers.a.url: is not a valid URL",
        ),
        (
            {
                "servers": {
                    "a": {"transport": "streamable_http", "url": "http://h/", "command": "x"}
                }
            },
            "servers.a.command: not a key of a streamable_http server",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h/", "headers": {"A": 1}}}},
            "servers.a.headers: must be an object of string header values",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h/", "headers": {"A": "x\ny"}}}},
            "servers.a.headers: header 'A' contains a line break",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h/", "allowed_tools": "t"}}},
            "servers.a.allowed_tools: must be a list of tool names",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h/", "timeout_s": 0}}},
            "servers.a.timeout_s: must be a positive number",
        ),
        (
            {"servers": {"a": {"transport": "sse", "url": "http://h/", "timeout_s": True}}},
            "servers.a.timeout_s: must be a positive number",
        ),
    ],
)
def test_validation_errors_name_the_key(tmp_path: Path, data: Any, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(McpConfigError) as info:
        load_mcp_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(McpConfigError, match="cannot read"):
        load_mcp_config(tmp_path / "missing.json")
    with pytest.raises(McpConfigError, match=r"not valid JSON \(line 1, column 1.*only JSON"):
        load_mcp_config(write(tmp_path, "servers:\n  a: {}\n"))


def test_parse_names_its_source() -> None:
    with pytest.raises(McpConfigError, match=r"^inline: servers: must be an object"):
        parse_mcp_config({"servers": 3}, source="inline")


def test_remote_server_from_responses_tool() -> None:
    server = RemoteServer.from_tool(
        {
            "type": "mcp",
            "server_label": "deepwiki",
            "server_url": "https://mcp.deepwiki.com/mcp",
            "allowed_tools": ["ask_question"],
            "headers": {"X-Key": "k"},
            "authorization": "tok",
            "require_approval": "never",
        }
    )
    assert server.label == "deepwiki"
    assert server.transport == "streamable_http"
    assert server.allowed_tools == frozenset({"ask_question"})
    assert server.headers == (("Authorization", "Bearer tok"), ("X-Key", "k"))
    assert server.require_approval == "never"
    # Credentials stay out of reprs (they end up in logs).
    assert "tok" not in repr(server) and "'k'" not in repr(server)
    # The object form of allowed_tools, and an SSE URL.
    sse = RemoteServer.from_tool(
        {
            "type": "mcp",
            "server_label": "x",
            "server_url": "https://h.example/sse/",
            "allowed_tools": {"tool_names": ["a", "b"]},
        }
    )
    assert sse.transport == "sse"
    assert sse.allowed_tools == frozenset({"a", "b"})
    assert sse.key != server.key


def test_remote_server_key_ignores_label_and_header_order() -> None:
    def tool(label: str, headers: dict[str, str]) -> RemoteServer:
        return RemoteServer.from_tool(
            {"server_label": label, "server_url": "https://h.example/mcp", "headers": headers}
        )

    assert tool("a", {"A": "1", "B": "2"}).key == tool("b", {"B": "2", "A": "1"}).key
    assert tool("a", {"A": "1"}).key != tool("a", {"A": "2"}).key


@pytest.mark.parametrize(
    ("tool", "param", "message"),
    [
        ("x", "tools[3]", "must be an object"),
        ({"server_url": "https://h/"}, "tools[3].server_label", "server_label is required"),
        ({"server_label": "a"}, "tools[3].server_url", "server_url is required"),
        (
            {"server_label": "a", "server_url": "file:///etc/passwd"},
            "tools[3].server_url",
            "must be an http:// or https:// URL",
        ),
        (
            {"server_label": "a", "connector_id": "connector_gmail"},
            "tools[3].connector_id",
            "not supported",
        ),
        (
            {"server_label": "a", "server_url": "https://h/", "headers": ["x"]},
            "tools[3].headers",
            "must be an object",
        ),
        (
            {"server_label": "a", "server_url": "https://h/", "allowed_tools": [1]},
            "tools[3].allowed_tools",
            "list of tool names",
        ),
        (
            {"server_label": "a", "server_url": "https://h/", "allowed_tools": {"tool_names": 1}},
            "tools[3].allowed_tools.tool_names",
            "list of tool names",
        ),
        (
            {"server_label": "a", "server_url": "https://h/", "authorization": 5},
            "tools[3].authorization",
            "non-empty string",
        ),
    ],
)
def test_bad_mcp_tools_name_the_param(tool: Any, param: str, message: str) -> None:
    with pytest.raises(McpToolSpecError) as info:
        RemoteServer.from_tool(tool, param="tools[3]")
    assert info.value.param == param
    assert message in info.value.message
