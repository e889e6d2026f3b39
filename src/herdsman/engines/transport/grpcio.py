"""Transport over grpcio's asyncio stack: the reference implementation of gRPC."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from herdsman.engines.transport.base import RpcError, TransportOptions

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]


def _identity(data: bytes) -> bytes:
    return data


class GrpcioTransport:
    name = "grpcio"

    def __init__(self, target: str, options: TransportOptions | None = None) -> None:
        self._options = options or TransportOptions()
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)

    async def unary(self, method: str, request: Any, response_type: Any, timeout: float) -> Any:
        call = self._channel.unary_unary(
            method,
            request_serializer=_identity,
            response_deserializer=response_type.FromString,
        )
        try:
            return await call(request.SerializeToString(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code(), exc.details() or "") from exc

    async def stream(
        self, method: str, request: Any, response_type: Any, timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        multi = self._channel.unary_stream(
            method,
            request_serializer=_identity,
            response_deserializer=response_type.FromString,
        )
        call = multi(request.SerializeToString(), timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code(), exc.details() or "") from exc
        finally:
            if not call.done():
                call.cancel()

    async def close(self) -> None:
        await self._channel.close()
