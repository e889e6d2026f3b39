"""Open a client for a worker URL, choosing the protocol adapter or detecting it."""

from __future__ import annotations

import grpc

from herdsman.engines.base import EngineClient, EngineUnavailable
from herdsman.engines.grpc_engine import GrpcEngine
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.transport import TRANSPORTS, RpcError, Transport
from herdsman.engines.vllm import VllmEngine

BACKENDS: dict[str, type[GrpcEngine]] = {
    VllmEngine.backend: VllmEngine,
    SglangScheduler.backend: SglangScheduler,
}


def parse_worker_url(url: str) -> str:
    """``grpc://host:port`` (or bare ``host:port``) to the gRPC target ``host:port``."""
    target = url.removeprefix("grpc://")
    if "://" in target or ":" not in target:
        raise ValueError(f"worker URL must look like grpc://HOST:PORT, got {url!r}")
    return target


async def _speaks(adapter: type[GrpcEngine], transport: Transport, timeout: float) -> bool:
    """True when the worker implements this adapter's service (probed with GetModelInfo)."""
    method = f"/{adapter.service}/GetModelInfo"
    try:
        await transport.unary(
            method, adapter.pb2.GetModelInfoRequest(), adapter.pb2.GetModelInfoResponse, timeout
        )
    except RpcError as exc:
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise EngineUnavailable(f"worker unreachable: {exc}") from exc
    return True


async def connect_engine(
    url: str, backend: str = "auto", transport: str = "native", timeout: float = 10.0
) -> EngineClient:
    """Connect to a worker; with ``backend="auto"`` ask each service until one answers."""
    target = parse_worker_url(url)
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose from {sorted(TRANSPORTS)}")
    channel = TRANSPORTS[transport](target)
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
        return BACKENDS[backend](target, channel)
    for adapter in BACKENDS.values():
        if await _speaks(adapter, channel, timeout):
            return adapter(target, channel)
    await channel.close()
    raise EngineUnavailable(f"worker {url} speaks none of {sorted(BACKENDS)}")
