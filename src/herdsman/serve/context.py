"""Build the serving context: connect to every worker, learn the model, load its tokenizer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from herdsman.config import GatewayConfig
from herdsman.engines import EngineClient, ModelInfo, connect_engine
from herdsman.engines.transport import TransportOptions
from herdsman.multimodal.fetch import FetchPolicy, ImageFetcher
from herdsman.multimodal.registry import load_processor
from herdsman.multimodal.service import ImagePreprocessor
from herdsman.observability import METRICS
from herdsman.parsers import registry
from herdsman.pipeline.admission import Admission
from herdsman.pipeline.context import RequestLimits, ServedModel, ServingContext
from herdsman.pipeline.images import ImageSupport
from herdsman.pipeline.retry import RetryPolicy
from herdsman.routing import (
    POLICIES,
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
    Worker,
    WorkerRegistry,
)
from herdsman.serve.tokenizer_source import fetch_from_worker
from herdsman.tokenizer import ModelTokenizer, load_model_tokenizer
from herdsman.tokenizer.shared_store import SharedSegmentStore

log = logging.getLogger(__name__)

_DEFAULT_CONTEXT = 32768


def circuit_config(config: GatewayConfig) -> CircuitConfig:
    return CircuitConfig(
        enabled=config.cb_enabled,
        failure_threshold=config.cb_failure_threshold,
        success_threshold=config.cb_success_threshold,
        open_seconds=config.cb_timeout,
        window=config.cb_window,
        failure_rate=config.cb_failure_rate,
        min_requests=config.cb_min_requests,
    )


def retry_policy(config: GatewayConfig) -> RetryPolicy:
    return RetryPolicy(
        max_retries=max(0, config.max_retries),
        initial_backoff=config.retry_initial_backoff,
        max_backoff=config.retry_max_backoff,
        multiplier=config.retry_backoff_multiplier,
        jitter=config.retry_jitter,
    )


def request_limits(config: GatewayConfig) -> RequestLimits:
    return RequestLimits(
        request_timeout=config.request_timeout,
        max_choices=config.max_choices_per_request,
        max_images=config.max_images_per_request,
        image_fetch_timeout=config.image_fetch_timeout,
    )


def admission(config: GatewayConfig) -> Admission:
    """This process's admission; the gateway process gives it the shared board once it knows
    its slot."""
    return Admission(
        max_concurrent=config.max_concurrent_requests,
        queue_size=config.queue_size,
        queue_timeout=config.queue_timeout,
        max_prompt_tokens=config.max_prompt_tokens_in_flight,
    )


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
    return await connect_engine(
        url,
        config.backend,
        config.grpc_transport,
        timeout=config.engine_connect_timeout,
        options=transport_options(config),
    )


async def _connect_all(config: GatewayConfig) -> WorkerRegistry:
    engines = await asyncio.gather(*(connect_worker_engine(config, url) for url in config.workers))
    infos = await asyncio.gather(*(engine.model_info() for engine in engines))
    registry = WorkerRegistry()
    circuit = circuit_config(config)
    for url, engine, info in zip(config.workers, engines, infos, strict=True):
        registry.add(Worker(url=url, engine=engine, model=info, circuit=CircuitBreaker(circuit)))
        log.info("worker %s: %s backend, model %r", url, engine.backend, info.served_model_name)
    return registry


def _served_name(config: GatewayConfig, info: ModelInfo, tokenizer_dir: Path) -> str:
    return (
        config.served_model_name
        or info.served_model_name
        or Path(info.model_path).name
        or tokenizer_dir.name
    )


def _parsers(
    config: GatewayConfig, info: ModelInfo, name: str, tokenizer: ModelTokenizer
) -> tuple[str | None, str | None]:
    template = tokenizer.chat_template.source if tokenizer.chat_template else None
    auto_reasoning, auto_tools = registry.auto_select(
        info.model_type, list(info.architectures), name, template
    )
    chosen = []
    for flag, auto, lookup in (
        (config.reasoning_parser, auto_reasoning, registry.get_reasoning_parser),
        (config.tool_call_parser, auto_tools, registry.get_tool_call_parser),
    ):
        if flag == "none":
            chosen.append(None)
        elif flag == "auto":
            chosen.append(auto)
        else:
            chosen.append(lookup(flag).name)  # raises, listing the names, when unknown
    log.info("parsers: reasoning %s, tool calls %s", chosen[0], chosen[1])
    return chosen[0], chosen[1]


def _image_support(
    config: GatewayConfig, model_dir: Path, tokenizer: ModelTokenizer
) -> ImageSupport | None:
    if not (model_dir / "preprocessor_config.json").is_file():
        return None
    processor = load_processor(model_dir)
    model_config = (
        json.loads((model_dir / "config.json").read_text())
        if (model_dir / "config.json").is_file()
        else {}
    )
    token_id = model_config.get("image_token_id") or tokenizer.token_id("<|image_pad|>")
    if not isinstance(token_id, int):
        log.warning("%s has an image processor but no image token id; images off", model_dir)
        return None
    policy = FetchPolicy(
        max_bytes=config.max_image_bytes,
        allow_private=config.allow_private_image_urls,
        allowed_domains=tuple(config.image_url_domains) if config.image_url_domains else None,
    )
    log.info("image inputs on: %s, image token %d", type(processor).__name__, token_id)
    return ImageSupport(ImageFetcher(policy), ImagePreprocessor(processor), token_id)


def _cache_wanted(mode: str, tokenizer: ModelTokenizer) -> bool:
    """auto: the cache pays for the tokenizers backend (17x on growing chats) but costs fastokens
    2-3x its own encode time, in one process or spread over many (docs/benchmarks-tokenizer.md)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--tokenizer-cache must be auto, on or off, not {mode!r}")
    if mode == "auto":
        return tokenizer.backend != "fastokens"
    return mode == "on"


def _shared_store(config: GatewayConfig, tokenizer: ModelTokenizer) -> SharedSegmentStore | None:
    """The segment store every gateway process maps, in the supervisor's directory (if any).

    One store per tokenizer file: segment ids are only valid for the tokenizer that made them.
    """
    if not config.tokenizer_cache_dir or config.tokenizer_cache_shared_bytes <= 0:
        return None
    if tokenizer.tokenizer_file is None:
        return None
    source = tokenizer.tokenizer_file.resolve()
    stat = source.stat()
    identity = f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    directory = Path(config.tokenizer_cache_dir) / hashlib.sha256(identity).hexdigest()[:16]
    directory.mkdir(exist_ok=True)
    return SharedSegmentStore(directory, config.tokenizer_cache_shared_bytes)


async def build_context(config: GatewayConfig) -> ServingContext:
    if not config.workers:
        raise ValueError("at least one --worker grpc://HOST:PORT is needed")
    registry = await _connect_all(config)
    first = next(iter(registry))
    local = config.tokenizer_path or config.model_path
    tokenizer_dir = Path(local) if local else await fetch_from_worker(first.engine)
    tokenizer = await asyncio.to_thread(load_model_tokenizer, tokenizer_dir, config.chat_template)
    cache = None
    if _cache_wanted(config.tokenizer_cache, tokenizer):
        cache = tokenizer.enable_cache(
            config.tokenizer_cache_l0_bytes,
            config.tokenizer_cache_l1_bytes,
            _shared_store(config, tokenizer),
        )
    if cache is not None:
        METRICS.watch_tokenizer_cache(cache)
    log.info(
        "tokenizer %s: encoding with %s; cache L0 %s, L1 %s%s",
        tokenizer_dir,
        tokenizer.backend,
        "on" if cache is not None and cache.l0 is not None else "off",
        "on" if cache is not None and cache.l1_enabled else "off",
        " (shared by the gateway's processes)" if cache is not None and cache.shared else "",
    )
    info = first.model
    # The engine's own EOS list wins; the tokenizer's fills in when the engine does not say.
    eos = tuple(info.eos_token_ids) or tokenizer.eos_token_ids
    model = ServedModel(
        name=_served_name(config, info, tokenizer_dir),
        tokenizer=tokenizer,
        max_context_length=info.max_context_length
        or tokenizer.model_max_length
        or _DEFAULT_CONTEXT,
        eos_token_ids=eos,
        created=int(time.time()),
    )
    model.reasoning_parser, model.tool_call_parser = _parsers(config, info, model.name, tokenizer)
    model.images = _image_support(config, tokenizer_dir, tokenizer)
    if config.policy not in POLICIES:
        raise ValueError(f"unknown policy {config.policy!r}; choose from {sorted(POLICIES)}")
    log.info(
        "serving %r (context %d, tokenizer %s)", model.name, model.max_context_length, tokenizer_dir
    )
    ctx = ServingContext(
        model=model,
        registry=registry,
        policy=POLICIES[config.policy](),
        retry=retry_policy(config),
        limits=request_limits(config),
        admission=admission(config),
    )
    _watch(ctx)
    return ctx


def _watch(ctx: ServingContext) -> None:
    """Admission and circuit state, read into the metrics whenever they are rendered."""

    def collect() -> None:
        METRICS.queued.set(ctx.admission.queued)
        METRICS.loop_tasks.set(len(asyncio.all_tasks()))
        for worker in ctx.registry:
            state = worker.circuit.state
            METRICS.circuit_open.set(0.0 if state is CircuitState.CLOSED else 1.0, (worker.url,))

    METRICS.registry.collectors.append(collect)
