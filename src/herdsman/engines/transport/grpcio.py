"""Transport over grpcio's asyncio stack: the reference implementation of gRPC.

The same semantics as the native transport, through grpc's own options: the call's deadline as
its timeout, keepalive PINGs while calls are in flight (grpc core fails the connection's calls
with UNAVAILABLE when one goes unanswered, and halves its own rate on "too_many_pings"), the
maximum message size (RESOURCE_EXHAUSTED beyond it), MAX_CONCURRENT_STREAMS (grpc core queues
calls over it once it knows the limit), TLS and mTLS from ssl_channel_credentials.

A stream the engine refuses (REFUSED_STREAM, or above a GOAWAY's last stream id) is retried
transparently by grpc core; if that fails too it surfaces as UNAVAILABLE, and grpcio says it was
refused only in the details text ("... RST_STREAM with error code 7"), which ``rpc_error`` reads.
Seen in tests: a burst of calls on a fresh channel, before the engine's SETTINGS arrived, went
over MAX_CONCURRENT_STREAMS and was refused (the native transport waits for the SETTINGS).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from herdsman.engines.transport.base import (
    Listener,
    Metadata,
    RpcError,
    StatusCode,
    TransportOptions,
)
from herdsman.engines.transport.tls import read_optional


def _identity(data: bytes) -> bytes:
    return data


# How grpc core words a stream reset with REFUSED_STREAM (HTTP/2 error 7).
_REFUSED_DETAILS = "RST_STREAM with error code 7"


def rpc_error(exc: grpc.aio.AioRpcError) -> RpcError:
    code, details = StatusCode[exc.code().name], exc.details() or ""
    refused = code == StatusCode.UNAVAILABLE and _REFUSED_DETAILS in details
    return RpcError(code, details, refused=refused)


def channel_options(options: TransportOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", 512 * 1024 * 1024),
        ("grpc.keepalive_time_ms", max(1, int(options.keepalive_interval * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, int(options.keepalive_timeout * 1000))),
        # Any unanswered PING fails the connection, not only keepalive's: grpc core sends one
        # PING at a time, and a flow-control (BDP) PING lost to a frozen peer would otherwise
        # hold keepalive's back forever (seen: calls hung until their deadline).
        ("grpc.http2.ping_timeout_ms", max(1, int(options.keepalive_timeout * 1000))),
        # PING only while calls are in flight, as the native transport does.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
        # grpc's MIN_CONNECT_TIMEOUT: a connect attempt gives up after this long.
        ("grpc.min_reconnect_backoff_ms", max(100, int(options.connect_timeout * 1000))),
    ]


class GrpcioTransport:
    name = "grpcio"

    def __init__(self, target: str, options: TransportOptions | None = None) -> None:
        self._options = options = options or TransportOptions()
        if options.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read_optional(options.ca_file),
                private_key=read_optional(options.key_file),
                certificate_chain=read_optional(options.cert_file),
            )
            self._channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options(options)
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options(options))

    async def unary(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float,
        metadata: Metadata | None = None,
    ) -> Any:
        call = self._channel.unary_unary(
            method,
            request_serializer=_identity,
            response_deserializer=response_type.FromString,
        )
        try:
            return await call(request.SerializeToString(), timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from exc

    async def stream(
        self,
        method: str,
        request: Any,
        response_type: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        listener: Listener | None = None,
    ) -> AsyncGenerator[Any, None]:
        # grpcio reads in its own tasks: every message comes through the generator, and the
        # listener is never offered one.
        multi = self._channel.unary_stream(
            method,
            request_serializer=_identity,
            response_deserializer=response_type.FromString,
        )
        call = multi(request.SerializeToString(), timeout=timeout, metadata=metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from exc
        finally:
            if not call.done():
                call.cancel()

    async def close(self) -> None:
        await self._channel.close()
