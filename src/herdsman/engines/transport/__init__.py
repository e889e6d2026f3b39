"""How adapter calls reach an engine: grpcio's asyncio stack, or herdsman's own HTTP/2 client.

Both give the adapters the same two calls (unary and server-streaming) and the same error type,
so a transport can be chosen per deployment without touching the protocol adapters. The grpcio
transport is imported when it is chosen: grpcio's C core is ~20 MB of a process that uses the
native one.
"""

from __future__ import annotations

from herdsman.engines.transport.base import RpcError, StatusCode, Transport, TransportOptions
from herdsman.engines.transport.native import NativeTransport


def transport_class(name: str) -> type[Transport]:
    """The transport called ``name``: "native" or "grpcio"."""
    if name == "native":
        return NativeTransport
    if name == "grpcio":
        from herdsman.engines.transport.grpcio import GrpcioTransport

        return GrpcioTransport
    raise ValueError(f"unknown transport {name!r}; choose from ['grpcio', 'native']")


__all__ = [
    "NativeTransport",
    "RpcError",
    "StatusCode",
    "Transport",
    "TransportOptions",
    "transport_class",
]
