"""How adapter calls reach an engine: grpcio's asyncio stack, or herdsman's own HTTP/2 client.

Both give the adapters the same two calls (unary and server-streaming) and the same error type,
so a transport can be chosen per deployment without touching the protocol adapters.
"""

from herdsman.engines.transport.base import RpcError, Transport, TransportOptions
from herdsman.engines.transport.grpcio import GrpcioTransport
from herdsman.engines.transport.native import NativeTransport

TRANSPORTS: dict[str, type[Transport]] = {
    "native": NativeTransport,
    "grpcio": GrpcioTransport,
}

__all__ = [
    "TRANSPORTS",
    "GrpcioTransport",
    "NativeTransport",
    "RpcError",
    "Transport",
    "TransportOptions",
]
