"""Which MCP servers the gateway may call: the operator's `--mcp-config` file, and the servers a
request names itself (an OpenAI Responses `{"type": "mcp", ...}` tool).

JSON only: YAML would need PyYAML, which is not a runtime dependency of herdsman (JSON is a
subset of YAML 1.2, so such a file stays valid if YAML support is added later).

Nothing here imports the `mcp` SDK (about a second to import): the CLI validates the file at
startup without paying for it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

Transport = Literal["stdio", "sse", "streamable_http"]
TRANSPORTS: tuple[Transport, ...] = ("stdio", "sse", "streamable_http")

#: Seconds a tool call (or a tool listing, connecting included) may take unless configured.
DEFAULT_TIMEOUT_S = 60.0


class McpConfigError(ValueError):
    """The `--mcp-config` file is unusable; the message names the file and the offending key."""


class McpToolSpecError(ValueError):
    """A request's `{"type": "mcp"}` tool is malformed. `param` is the request field at fault
    (e.g. `tools[2].server_url`), for the API's 400 error."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _redacted(headers: tuple[tuple[str, str], ...]) -> str:
    # Headers carry API keys: a repr that ends up in a log must not show their values.
    return "{" + ", ".join(f"{k!r}: '***'" for k, _ in headers) + "}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One server of the `--mcp-config` file, trusted by the operator (no SSRF checks)."""

    label: str
    transport: Transport
    # stdio
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)
    cwd: str | None = None
    # sse / streamable_http
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: tool names callers may list and call; None: all of the server's tools
    allowed_tools: frozenset[str] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def key(self) -> tuple[str, ...]:
        """The pool's session key: one session per configured label."""
        return ("config", self.label)

    def restricted(self, allowed_tools: frozenset[str] | None) -> ServerConfig:
        """This server with its tools narrowed further (a request may only shrink the set the
        operator allowed). Same key, so the same pooled session."""
        if allowed_tools is None:
            return self
        if self.allowed_tools is not None:
            allowed_tools = allowed_tools & self.allowed_tools
        return dataclasses.replace(self, allowed_tools=allowed_tools)


@dataclass(frozen=True, slots=True)
class RemoteServer:
    """A server a request names by URL: untrusted, so its address is SSRF-checked."""

    label: str
    url: str
    transport: Literal["sse", "streamable_http"] = "streamable_http"
    headers: tuple[tuple[str, str], ...] = ()
    allowed_tools: frozenset[str] | None = None
    #: OpenAI's `require_approval` as given ("always", "never" or the per-tool object); the
    #: pool does not act on it, the API layer does.
    require_approval: Any = None
    description: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:
        return (
            f"RemoteServer(label={self.label!r}, url={self.url!r}, transport={self.transport!r}, "
            f"headers={_redacted(self.headers)}, allowed_tools={self.allowed_tools!r})"
        )

    @property
    def key(self) -> tuple[Any, ...]:
        """One session per (url, headers), whatever label requests give it: two users with
        different credentials never share a session, one user's requests always do."""
        return ("url", self.transport, self.url, self.headers)

    @classmethod
    def from_tool(
        cls,
        tool: Mapping[str, Any],
        *,
        param: str = "tools[]",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RemoteServer:
        """Parse a Responses API tool `{"type": "mcp", "server_label", "server_url",
        "allowed_tools", "headers", "authorization", "require_approval", ...}`.

        `allowed_tools` may be a list of names or `{"tool_names": [...]}`. `authorization` (an
        OAuth access token) becomes an `Authorization: Bearer` header. The transport is SSE
        when the URL's path ends in `/sse` (the convention SSE servers follow), streamable HTTP
        otherwise. Raises McpToolSpecError naming `param.<field>`.
        """
        if not isinstance(tool, Mapping):
            raise McpToolSpecError("an mcp tool must be an object", param=param)

        def bad(message: str, param: str) -> McpToolSpecError:
            # The shared checkers' messages start with a verb: name the field they are about.
            return McpToolSpecError(f"{param.removeprefix(prefix)} {message}", param=param)

        prefix = f"{param}."
        label = tool.get("server_label")
        if not isinstance(label, str) or not label:
            raise McpToolSpecError(
                "server_label is required and must be a non-empty string",
                param=f"{param}.server_label",
            )
        if tool.get("connector_id") is not None:
            raise McpToolSpecError(
                "connector_id is not supported; give a server_url", param=f"{param}.connector_id"
            )
        url = tool.get("server_url")
        if not isinstance(url, str) or not url:
            raise McpToolSpecError(
                "server_url is required and must be a string", param=f"{param}.server_url"
            )
        _check_http_url(url, bad, f"{param}.server_url")
        headers = _headers(tool.get("headers"), f"{param}.headers", bad)
        authorization = tool.get("authorization")
        if authorization is not None:
            if not isinstance(authorization, str) or not authorization:
                raise McpToolSpecError(
                    "authorization must be a non-empty string", param=f"{param}.authorization"
                )
            headers = tuple(
                sorted({**dict(headers), "Authorization": f"Bearer {authorization}"}.items())
            )
        allowed = tool.get("allowed_tools")
        if isinstance(allowed, Mapping):
            # The object form also has `read_only` (filter by the tool's readOnlyHint); only
            # the names are supported here.
            if allowed.get("read_only") is not None:
                raise McpToolSpecError(
                    "allowed_tools.read_only is not supported",
                    param=f"{param}.allowed_tools.read_only",
                )
            allowed = allowed.get("tool_names")
            allowed_param = f"{param}.allowed_tools.tool_names"
        else:
            allowed_param = f"{param}.allowed_tools"
        description = tool.get("server_description")
        if description is not None and not isinstance(description, str):
            raise McpToolSpecError(
                "server_description must be a string", param=f"{param}.server_description"
            )
        path = urlsplit(url).path.rstrip("/")
        return cls(
            label=label,
            url=url,
            transport="sse" if path.endswith("/sse") else "streamable_http",
            headers=headers,
            allowed_tools=_tool_names(allowed, allowed_param, bad),
            require_approval=tool.get("require_approval"),
            description=description,
            timeout_s=timeout_s,
        )


#: What the pool accepts: a configured server or a per-request one.
McpServer = ServerConfig | RemoteServer


@dataclass(frozen=True, slots=True)
class McpConfig:
    servers: Mapping[str, ServerConfig] = field(default_factory=dict)

    def get(self, label: str) -> ServerConfig | None:
        return self.servers.get(label)


def load_mcp_config(path: str | Path) -> McpConfig:
    """Read and validate a `--mcp-config` file; McpConfigError (naming the file) if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise McpConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise McpConfigError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "only JSON is supported"
        ) from None
    return parse_mcp_config(data, source=str(path))


_STDIO_KEYS = frozenset(
    {"transport", "command", "args", "env", "cwd", "allowed_tools", "timeout_s"}
)
_HTTP_KEYS = frozenset({"transport", "url", "headers", "allowed_tools", "timeout_s"})


def parse_mcp_config(data: Any, *, source: str = "mcp config") -> McpConfig:
    """Validate `{"servers": {"<label>": {...}}}`; each error names the key path at fault."""

    def fail(key: str, message: str) -> McpConfigError:
        return McpConfigError(f"{source}: {key}: {message}")

    def failing_at(where: str) -> Callable[..., McpConfigError]:
        # The shared checkers' `error(message, param=...)`, as a config error for `where`.
        return lambda message, param=None: fail(param or where, message)

    if not isinstance(data, Mapping):
        raise McpConfigError(f"{source}: the top level must be an object with a 'servers' key")
    unknown = set(data) - {"servers"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key (expected only 'servers')")
    servers_data = data.get("servers")
    if not isinstance(servers_data, Mapping):
        raise fail("servers", "must be an object mapping labels to servers")
    servers: dict[str, ServerConfig] = {}
    for label, spec in servers_data.items():
        where = f"servers.{label}"
        if not label or not isinstance(label, str):
            raise fail(where, "a server label must be a non-empty string")
        if not isinstance(spec, Mapping):
            raise fail(where, "must be an object")
        transport = spec.get("transport")
        if transport not in TRANSPORTS:
            raise fail(
                f"{where}.transport",
                f"must be one of {', '.join(TRANSPORTS)} (got {transport!r})",
            )
        allowed_keys = _STDIO_KEYS if transport == "stdio" else _HTTP_KEYS
        for key in spec:
            if key not in allowed_keys:
                raise fail(
                    f"{where}.{key}",
                    f"not a key of a {transport} server "
                    f"(allowed: {', '.join(sorted(allowed_keys))})",
                )
        timeout = spec.get("timeout_s", DEFAULT_TIMEOUT_S)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise fail(f"{where}.timeout_s", f"must be a positive number (got {timeout!r})")
        allowed = _tool_names(
            spec.get("allowed_tools"), f"{where}.allowed_tools", failing_at(where)
        )
        if transport == "stdio":
            command = spec.get("command")
            if not isinstance(command, str) or not command:
                raise fail(f"{where}.command", "required for stdio: a non-empty string")
            args = spec.get("args", [])
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise fail(f"{where}.args", "must be a list of strings")
            env = spec.get("env")
            if env is not None and (
                not isinstance(env, Mapping)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            ):
                raise fail(f"{where}.env", "must be an object of string values")
            cwd = spec.get("cwd")
            if cwd is not None and (not isinstance(cwd, str) or not cwd):
                raise fail(f"{where}.cwd", "must be a non-empty string")
            servers[label] = ServerConfig(
                label=label,
                transport="stdio",
                command=command,
                args=tuple(args),
                env=tuple(sorted(env.items())) if env is not None else None,
                cwd=cwd,
                allowed_tools=allowed,
                timeout_s=float(timeout),
            )
        else:
            url = spec.get("url")
            if not isinstance(url, str) or not url:
                raise fail(f"{where}.url", f"required for {transport}: a non-empty string")
            _check_http_url(url, failing_at(where), f"{where}.url")
            servers[label] = ServerConfig(
                label=label,
                transport=transport,
                url=url,
                headers=_headers(spec.get("headers"), f"{where}.headers", failing_at(where)),
                allowed_tools=allowed,
                timeout_s=float(timeout),
            )
    return McpConfig(servers=servers)


def _check_http_url(url: str, error: Any, param: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise error("is not a valid URL", param=param) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise error(f"must be an http:// or https:// URL (got {url!r})", param=param)
    if not parts.hostname:
        raise error(f"has no host (got {url!r})", param=param)
    if parts.username or parts.password:
        # Credentials in the URL would be sent to wherever it redirects; headers exist for them.
        raise error("must not carry credentials; use headers", param=param)


def _headers(value: Any, param: str, error: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise error("must be an object of string header values", param=param)
    for k, v in value.items():
        if any(c in k for c in "\r\n:") or any(c in v for c in "\r\n"):
            raise error(f"header {k!r} contains a line break or colon", param=param)
    # Sorted so that the same headers in any order are one pool key.
    return tuple(sorted(value.items()))


def _tool_names(value: Any, param: str, error: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise error("must be a list of tool names (non-empty strings)", param=param)
    return frozenset(value)
