"""SSRF protection for per-request MCP server URLs, with the image fetcher's address policy.

Checking a URL once before connecting is not enough: the MCP transports connect (and reconnect,
and follow same-origin redirects) through httpx2 long after the check, and a DNS answer that
changes in between (rebinding) would reach an internal host. So the check also lives in the
HTTP client's network backend: every TCP connection resolves the host, refuses it if any
answer is forbidden, and connects to the very address it checked (TLS still verifies the
hostname, which httpcore passes as SNI separately). The up-front `check_url` exists for a clear
error (`McpUrlRefused`) before any transport machinery starts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

# The image fetcher's policy (loopback/private/link-local/CGNAT/... refused unless
# allow_private; cloud metadata addresses always). herdsman.multimodal imports nothing of
# herdsman.mcp, so there is no cycle; it is imported anyway by every gateway process.
from herdsman.multimodal.fetch import FetchPolicy, IPAddress, address_refusal

from .errors import McpUrlRefused


def fetch_policy(allow_private: bool) -> FetchPolicy:
    return FetchPolicy(allow_private=allow_private)


async def resolve_checked(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """The addresses of `host`, all allowed by `policy`; ValueError saying why if any is not
    (a name with one forbidden answer is refused whole: which answer a connect would pick is
    not ours to predict) or if it does not resolve."""
    try:
        ips: list[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ValueError(f"host {host!r} could not be resolved ({exc})") from None
        ips = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in ips:
                ips.append(ip)
    if not ips:
        raise ValueError(f"host {host!r} has no address")
    for ip in ips:
        reason = address_refusal(ip, policy)
        if reason:
            raise ValueError(f"host {host!r} resolves to {reason} ({ip}); refused")
    return ips


async def check_url(url: str, policy: FetchPolicy, *, server_label: str) -> None:
    """McpUrlRefused unless `url` is http(s) to a host whose every address `policy` allows."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise McpUrlRefused(
            f"MCP server {server_label!r}: {url!r} is not an http(s) URL",
            server_label=server_label,
        )
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        await resolve_checked(parts.hostname, port, policy)
    except ValueError as exc:
        raise McpUrlRefused(
            f"MCP server {server_label!r}: URL {url!r} refused: {exc}",
            server_label=server_label,
        ) from None


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to checked addresses, and to exactly the address that was checked."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            ips = await resolve_checked(host, port, self._policy)
        except ValueError as exc:
            # httpx2 maps this to httpx2.ConnectError, which the transports report as a
            # connection failure: the same outcome as an unreachable host.
            raise httpcore2.ConnectError(str(exc)) from None
        error: Exception | None = None
        for ip in ips:
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not allowed for per-request MCP servers")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over `_PinnedBackend`. httpx2 takes no network backend, so the
    connection pool it builds is replaced by the same pool with ours (built once, unused)."""

    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        if not isinstance(self._pool, httpcore2.AsyncConnectionPool):
            raise TypeError("httpx2.AsyncHTTPTransport no longer pools through httpcore2")
        limits = httpx2.Limits()
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(policy),
        )


def pinned_http_client(
    policy: FetchPolicy,
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
) -> httpx2.AsyncClient:
    """An httpx2 client whose every connection is SSRF-checked and pinned. Giving httpx2 a
    transport also turns off environment proxies, which would otherwise make the proxy, not
    the checked address, the thing we connect to."""
    return httpx2.AsyncClient(
        transport=_PinnedTransport(policy),
        headers=headers,
        timeout=timeout if timeout is not None else httpx2.Timeout(30.0, read=300.0),
        follow_redirects=False,
    )
