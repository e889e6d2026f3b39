"""The fleet as the supervisor knows it: which engine workers exist, what each serves, and how to
learn that from an engine that may still be loading.

The supervisor probes an engine once (its model, its data-parallel size and KV block size, its
tokenizer) and hands every gateway process a ``WorkerSpec``; the processes then only connect.
An engine that does not answer yet is probed again with backoff until it does: a worker still
loading is waited for, not refused.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec

from herdsman.config import GatewayConfig
from herdsman.engines import EngineClient, EngineError, ModelInfo, connect_engine
from herdsman.engines.transport import TransportOptions
from herdsman.routing import worker_id
from herdsman.routing.pairing import bootstrap_port, pairing_info
from herdsman.serve.tokenizer_source import fetch_from_worker

log = logging.getLogger(__name__)

_PROBE_BACKOFF_INITIAL = 0.5
_PROBE_BACKOFF_MAX = 10.0


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One engine, as every gateway process needs to know it."""

    url: str
    model_name: str
    tokenizer_dir: str
    info: ModelInfo
    # Data-parallel ranks: each is routed to as its own worker.
    dp_size: int = 1
    # The engine's KV-cache block size (tokens), for cache-aware routing.
    block_size: int = 16
    # Disaggregated serving: "prefill", "decode" or "regular"; an SGLang prefill's bootstrap
    # port; what a prefill and a decode must agree on (routing.pairing).
    role: str = "regular"
    bootstrap_port: int | None = None
    pairing: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def worker_ids(self) -> list[str]:
        if self.dp_size <= 1:
            return [worker_id(self.url)]
        return [worker_id(self.url, rank) for rank in range(self.dp_size)]


def served_name(config: GatewayConfig, info: ModelInfo, tokenizer_dir: Path) -> str:
    return (
        config.served_model_name
        or info.served_model_name
        or Path(info.model_path).name
        or tokenizer_dir.name
    )


def _int(info: dict[str, object], key: str, default: int) -> int:
    value = info.get(key)
    try:
        return int(value) if value not in (None, "", 0) else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def transport_options(config: GatewayConfig) -> TransportOptions:
    return TransportOptions(
        connect_timeout=config.engine_connect_timeout,
        keepalive_interval=config.engine_keepalive_interval,
        keepalive_timeout=config.engine_keepalive_timeout,
        max_message_bytes=config.engine_max_message_bytes,
        ca_file=config.engine_ca,
        cert_file=config.engine_cert,
        key_file=config.engine_key,
    )


async def connect_worker_engine(config: GatewayConfig, url: str) -> EngineClient:
    """A client of engine ``url`` as configured: the supervisor's probes and health checks and
    every gateway process connect alike."""
    return await connect_engine(
        url,
        config.backend,
        config.grpc_transport,
        timeout=config.engine_connect_timeout,
        options=transport_options(config),
    )


async def probe(
    config: GatewayConfig, url: str, engine: EngineClient, known: dict[str, str]
) -> WorkerSpec:
    """What an engine serves. ``known`` maps model names to tokenizer directories already in
    use: a second engine of a model shares the first one's tokenizer."""
    info = await engine.model_info()
    server = await engine.server_info()
    local = config.tokenizer_path or config.model_path
    name_hint = config.served_model_name or info.served_model_name
    if name_hint and name_hint in known:
        tokenizer_dir = Path(known[name_hint])
    elif local and (not known or config.served_model_name):
        tokenizer_dir = Path(local)
    else:
        tokenizer_dir = await fetch_from_worker(engine)
    role, port = config.worker_roles.get(url, ("regular", None))
    # SGLang states its parallelism and page size in its server arguments.
    args = server.get("server_args")
    sglang: dict[str, object] = args if isinstance(args, dict) else {}
    return WorkerSpec(
        url=url,
        role=role,
        bootstrap_port=(port or bootstrap_port(server)) if role == "prefill" else None,
        pairing=pairing_info(server),
        model_name=served_name(config, info, tokenizer_dir),
        tokenizer_dir=str(tokenizer_dir),
        info=info,
        dp_size=max(1, _int(server, "data_parallel_size", _int(sglang, "dp_size", 1))),
        block_size=_int(server, "block_size", _int(sglang, "page_size", 16)),
    )


async def probe_until_ready(
    config: GatewayConfig,
    url: str,
    connect: object,
    known: dict[str, str],
    timeout: float,
) -> tuple[EngineClient, WorkerSpec]:
    """Connect to and probe ``url`` until it answers, with backoff, for up to ``timeout`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    delay = _PROBE_BACKOFF_INITIAL
    while True:
        engine: EngineClient | None = None
        try:
            engine = await connect(config, url)  # type: ignore[operator]
            return engine, await probe(config, url, engine, known)
        except (EngineError, OSError) as exc:
            if engine is not None:
                await engine.close()
            if loop.time() + delay > end:
                raise
            log.info("worker %s not ready (%s); trying again in %.1f s", url, exc, delay)
            await asyncio.sleep(delay)
            delay = min(_PROBE_BACKOFF_MAX, delay * 2)
