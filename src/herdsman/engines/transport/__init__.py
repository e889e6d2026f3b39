"""How adapter calls reach an engine: grpcio's asyncio stack, or herdsman's own HTTP/2 client.

Both give the adapters the same two calls (unary and server-streaming) and the same error type,
so a transport can be chosen per deployment without touching the protocol adapters. The grpcio
transport is imported when it is chosen: grpcio's C core is ~20 MB of a process that uses the
native one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herdsman.engines.transport.base import RpcError, StatusCode, Transport, TransportOptions
from herdsman.engines.transport.native import NativeTransport

if TYPE_CHECKING:
    from herdsman.engines.transport.grpcio import GrpcioTransport

TRANSPORT_NAMES = ("native", "grpcio")


def transport_class(name: str) -> type[Transport]:
    """The transport called ``name`` (one of TRANSPORT_NAMES)."""
    if name == "native":
        return NativeTransport
    if name == "grpcio":
        from herdsman.engines.transport.grpcio import GrpcioTransport

        return GrpcioTransport
    raise ValueError(f"unknown transport {name!r}; choose from {sorted(TRANSPORT_NAMES)}")


def __getattr__(name: str) -> Any:
    if name == "GrpcioTransport":
        return transport_class("grpcio")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TRANSPORT_NAMES",
    "GrpcioTransport",
    "NativeTransport",
    "RpcError",
    "StatusCode",
    "Transport",
    "TransportOptions",
    "transport_class",
]
