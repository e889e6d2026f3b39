"""Open a client for a worker URL, choosing the protocol adapter or detecting it."""

from __future__ import annotations

import dataclasses

from herdsman.engines.base import EngineClient, EngineUnavailable
from herdsman.engines.grpc_engine import GrpcEngine
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.transport import (
    RpcError,
    StatusCode,
    Transport,
    TransportOptions,
    transport_class,
)
from herdsman.engines.vllm import VllmEngine

BACKENDS: dict[str, type[GrpcEngine]] = {
    VllmEngine.backend: VllmEngine,
    SglangScheduler.backend: SglangScheduler,
}


def parse_worker_url(url: str) -> tuple[str, bool]:
    """``grpc://host:port`` (or bare ``host:port``) or ``grpcs://host:port`` (TLS) to the gRPC
    target ``host:port`` and whether it takes TLS."""
    tls = url.startswith("grpcs://")
    target = url.removeprefix("grpcs://" if tls else "grpc://")
    if "://" in target or ":" not in target:
        raise ValueError(f"worker URL must look like grpc://HOST:PORT or grpcs://..., got {url!r}")
    return target, tls


async def _speaks(adapter: type[GrpcEngine], transport: Transport, timeout: float) -> bool:
    """True when the worker implements this adapter's service (probed with GetModelInfo)."""
    method = f"/{adapter.service}/GetModelInfo"
    try:
        await transport.unary(
            method, adapter.pb2.GetModelInfoRequest(), adapter.pb2.GetModelInfoResponse, timeout
        )
    except RpcError as exc:
        if exc.code == StatusCode.UNIMPLEMENTED:
            return False
        raise EngineUnavailable(f"worker unreachable: {exc}") from exc
    return True


async def connect_engine(
    url: str,
    backend: str = "auto",
    transport: str = "native",
    timeout: float = 10.0,
    options: TransportOptions | None = None,
) -> EngineClient:
    """Connect to a worker; with ``backend="auto"`` ask each service until one answers."""
    target, tls = parse_worker_url(url)
    kind = transport_class(transport)
    options = dataclasses.replace(options or TransportOptions(), tls=tls)
    channel = kind(target, options)
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
        return BACKENDS[backend](target, channel)
    for adapter in BACKENDS.values():
        if await _speaks(adapter, channel, timeout):
            return adapter(target, channel)
    await channel.close()
    raise EngineUnavailable(f"worker {url} speaks none of {sorted(BACKENDS)}")
