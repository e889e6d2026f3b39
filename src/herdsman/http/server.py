"""The HTTP/1.1 server: listening, the connection cap, TLS, draining."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module

from herdsman.http.connection import ACCESS_LOG, Connection
from herdsman.http.limits import ServerLimits
from herdsman.http.messages import Handler

__all__ = ["HttpServer", "ServerLimits", "bind_socket"]


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        access_log: bool = False,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.ssl = ssl
        self.access_log = access_log
        if access_log:
            # Asked for explicitly: shown whatever the process's log level (--log-level warning).
            ACCESS_LOG.setLevel(logging.INFO)
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            sock=sock,
            backlog=4096,
            ssl=self.ssl,
            # A handshake is part of the time a client has to send its first request's headers.
            ssl_handshake_timeout=self.limits.header_timeout if self.ssl else None,
        )

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let in-flight responses finish until ``deadline`` seconds, then close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while self.in_flight and loop.time() < end:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection._close()


def bind_socket(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(4096)
    sock.setblocking(False)
    return sock
