"""Build the serving context of a gateway process from the supervisor's worker specs: connect to
each engine, load each model's tokenizer once, make each model's routing policy. Workers can be
added and removed later (``add_worker``, ``remove_engine``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from herdsman.config import GatewayConfig
from herdsman.engines import EngineClient, ModelInfo
from herdsman.mcp import load_mcp_config
from herdsman.observability import METRICS
from herdsman.parsers import registry
from herdsman.pipeline.admission import Admission
from herdsman.pipeline.context import RequestLimits, ServedModel, ServingContext
from herdsman.pipeline.images import ImageSupport
from herdsman.pipeline.retry import RetryPolicy
from herdsman.routing import (
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
    PolicyOptions,
    Worker,
    WorkerLoad,
    WorkerRegistry,
    make_policy,
    worker_id,
)
from herdsman.routing.kv_events import KvEventSubscriber
from herdsman.routing.pairing import incompatibility
from herdsman.serve.fleet import WorkerSpec, connect_worker_engine, probe_until_ready
from herdsman.serve.heap import trim_heap
from herdsman.serve.model_task import model_task
from herdsman.storage import default_storage_url, open_store
from herdsman.tokenizer import ModelTokenizer
from herdsman.tokenizer.loader import check_fast_encoder, open_model_tokenizer
from herdsman.tokenizer.shared_store import SharedSegmentStore
from herdsman.tokenizer.tokenizer import encode_thread

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
        worker_wait_timeout=config.worker_wait_timeout,
        kv_transfer_timeout=config.kv_transfer_timeout,
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
    # Here, not at the top: the processors import numpy and Pillow, which a text-only gateway
    # never loads (the fork server preloads them where a model has a processor: preload.py).
    from herdsman.multimodal.fetch import FetchPolicy, ImageFetcher
    from herdsman.multimodal.registry import load_processor
    from herdsman.multimodal.service import ImagePreprocessor

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
    # Transparent pixels on white, as vLLM's server loads images (its rgba_background_color).
    preprocessor = ImagePreprocessor(processor, alpha_background=(255, 255, 255))
    return ImageSupport(ImageFetcher(policy), preprocessor, token_id)


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
    store = _STORES.get(directory)
    if store is None:
        # Models that share a tokenizer file (a fleet of embedding, reranking and chat models
        # of one family) share its store: LMDB opens an environment once per process.
        directory.mkdir(exist_ok=True)
        store = _STORES[directory] = SharedSegmentStore(
            directory, config.tokenizer_cache_shared_bytes
        )
    return store


_STORES: dict[Path, SharedSegmentStore] = {}


def policy_for(config: GatewayConfig, model_name: str) -> str:
    """The routing policy of a model: its own (--model-policy NAME=POLICY) or the default."""
    for item in config.model_policies:
        name, _, policy = item.partition("=")
        if name == model_name:
            return policy
    return config.policy


def policy_options(config: GatewayConfig) -> PolicyOptions:
    return PolicyOptions(
        prefix_tokens=config.prefix_hash_tokens,
        balance_abs=config.cache_aware_balance_abs,
        balance_rel=config.cache_aware_balance_rel,
        prefill_weight=config.cache_aware_prefill_weight,
    )


async def load_model(config: GatewayConfig, spec: WorkerSpec) -> ServedModel:
    """A model's tokenizer, template, parsers and image support, from its first worker's spec."""
    tokenizer_dir = Path(spec.tokenizer_dir)
    tokenizer, pending, warmed = await asyncio.to_thread(
        open_model_tokenizer, tokenizer_dir, config.chat_template
    )
    # Checking the fast encoder encodes, and fastokens keeps ~16 MB of matching state in each
    # thread that encodes: check it in the loop's thread, which encodes every text below
    # long_text_chars, when the fork server warmed it (a few ms); else in the encode thread, so
    # that its ~100 ms first encode does not hold the loop.
    if warmed:
        check_fast_encoder(tokenizer, pending)
    else:
        await asyncio.get_running_loop().run_in_executor(
            encode_thread(), check_fast_encoder, tokenizer, pending
        )
    trim_heap()
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
        "tokenizer %s: encoding with %s, decoding with %s; cache L0 %s, L1 %s%s",
        tokenizer_dir,
        tokenizer.backend,
        tokenizer.decodes_with,
        "on" if cache is not None and cache.l0 is not None else "off",
        "on" if cache is not None and cache.l1_enabled else "off",
        " (shared by the gateway's processes)" if cache is not None and cache.shared else "",
    )
    info = spec.info
    # The engine's own EOS list wins; the tokenizer's fills in when the engine does not say.
    eos = tuple(info.eos_token_ids) or tokenizer.eos_token_ids
    model = ServedModel(
        name=spec.model_name,
        tokenizer=tokenizer,
        max_context_length=info.max_context_length
        or tokenizer.model_max_length
        or _DEFAULT_CONTEXT,
        eos_token_ids=eos,
        created=int(time.time()),
    )
    kind = model_task(info, tokenizer_dir)
    model.task, model.labels, model.matryoshka = kind.task, kind.labels, kind.matryoshka
    if model.task == "generate":
        model.reasoning_parser, model.tool_call_parser = _parsers(
            config, info, model.name, tokenizer
        )
        model.images = _image_support(config, tokenizer_dir, tokenizer)
    else:
        # Pooling outputs are numpy arrays: imported now (if the fork server has not), not by
        # the first request, on the event loop.
        import numpy  # noqa: F401
    policy = policy_for(config, model.name)
    prefill_policy = config.prefill_policy or policy
    decode_policy = config.decode_policy or policy
    policies = {policy, prefill_policy, decode_policy}
    if "cache_aware" in policies:
        from herdsman.routing.kv_index import KvIndex  # numpy: only where a policy needs it

        model.index = KvIndex(
            spec.block_size,
            max_blocks=config.kv_index_max_blocks,
            speculative_ttl=_SPECULATIVE_SECONDS,
        )
    options = policy_options(config)
    model.policy = make_policy(policy, options, model.index)
    model.prefill_policy = make_policy(prefill_policy, options, model.index)
    model.decode_policy = make_policy(decode_policy, options, model.index)
    model.wants_loads = bool(policies & _LOAD_POLICIES)
    log.info(
        "serving %r (%s, context %d, tokenizer %s, policy %s%s)",
        model.name,
        model.task,
        model.max_context_length,
        tokenizer_dir,
        model.policy.name,
        f", KV block size {spec.block_size}" if model.index is not None else "",
    )
    return model


# A prompt routed to a worker whose events are live is remembered there this long: the events of
# the blocks it stores arrive a little after the request, and the conversation's next turn may
# come first.
_SPECULATIVE_SECONDS = 5.0

# Policies that read the engines' loads (the rest never look at them).
_LOAD_POLICIES = frozenset({"least_load", "power_of_two", "cache_aware"})


async def add_worker(ctx: ServingContext, config: GatewayConfig, spec: WorkerSpec) -> list[Worker]:
    """Connect to one engine and route to it (each data-parallel rank as a worker); its model
    is loaded first if this is its first worker."""
    if ctx.registry.by_url(spec.url):
        return ctx.registry.by_url(spec.url)
    if spec.model_name not in ctx.models:
        ctx.models[spec.model_name] = await load_model(config, spec)
    engine = await connect_worker_engine(config, spec.url)
    circuit = circuit_config(config)
    ranks: list[int | None] = [None] if spec.dp_size <= 1 else list(range(spec.dp_size))
    workers = [
        Worker(
            url=spec.url,
            engine=engine,
            model=spec.info,
            model_name=spec.model_name,
            dp_rank=rank,
            dp_size=spec.dp_size,
            role=spec.role,
            bootstrap_port=spec.bootstrap_port,
            pairing=dict(spec.pairing),
            circuit=CircuitBreaker(circuit),
        )
        for rank in ranks
    ]
    for worker in workers:
        ctx.registry.add(worker)
    if spec.role != "regular":
        _log_unpairable(ctx, workers[0])
    _follow_kv_events(ctx, ctx.models[spec.model_name], spec, engine)
    log.info(
        "worker %s (%s): %s backend, model %r%s",
        spec.url,
        ", ".join(w.id for w in workers),
        engine.backend,
        spec.model_name,
        f", {spec.dp_size} data-parallel ranks" if spec.dp_size > 1 else "",
    )
    return workers


def _log_unpairable(ctx: ServingContext, worker: Worker) -> None:
    """Say once, when a prefill or decode worker joins, which pairs it will never form."""
    other = "decode" if worker.role == "prefill" else "prefill"
    for peer in ctx.registry.for_model(worker.model_name):
        if peer.role != other or peer.url == worker.url or peer.dp_rank not in (None, 0):
            continue
        prefill, decode = (worker, peer) if worker.role == "prefill" else (peer, worker)
        reason = incompatibility(prefill, decode)
        if reason is not None:
            log.warning(
                "prefill %s and decode %s will not be paired: %s", prefill.url, decode.url, reason
            )


def remove_engine(ctx: ServingContext, url: str) -> list[Worker]:
    """Stop routing to the engine at ``url``; requests running on it finish, then its
    connection closes."""
    removed = [w for w in ctx.registry.by_url(url) if ctx.registry.remove(w.id)]
    if removed:
        index = ctx.models[removed[0].model_name].index
        if index is not None:
            for worker in removed:
                index.remove_worker(worker.id)
        ctx.spawn(_close_when_idle(removed, ctx.kv_streams.pop(url, None)), name=f"retire {url}")
    return removed


async def _close_when_idle(workers: list[Worker], stream: KvEventSubscriber | None) -> None:
    if stream is not None:
        await stream.stop()
    while any(w.in_flight for w in workers):
        await asyncio.sleep(0.1)
    await workers[0].engine.close()


def _follow_kv_events(
    ctx: ServingContext, model: ServedModel, spec: WorkerSpec, engine: EngineClient
) -> None:
    """Consume the engine's KV-event stream when the model's policy reads loads or blocks."""
    if not model.wants_loads and model.index is None:
        return
    if model.index is not None and spec.block_size != model.index.block_size:
        log.warning(
            "worker %s caches KV in blocks of %d tokens, the model's other workers in %d: "
            "its blocks are not indexed, cache_aware sees it as holding nothing",
            spec.url,
            spec.block_size,
            model.index.block_size,
        )
    data_parallel = spec.dp_size > 1

    def name(_engine: EngineClient, rank: int) -> str:
        return worker_id(spec.url, rank if data_parallel else None)

    def on_load(wid: str, load: WorkerLoad) -> None:
        worker = ctx.registry.get(wid)
        if worker is not None:
            worker.update_load(load)

    stream = KvEventSubscriber(
        engine, model.index, name, on_load=on_load, dp_size=max(1, spec.dp_size)
    )
    ctx.kv_streams[spec.url] = stream
    stream.start()


async def stop_kv_streams(ctx: ServingContext) -> None:
    streams = list(ctx.kv_streams.values())
    ctx.kv_streams.clear()
    for stream in streams:
        await stream.stop()


async def build_context(config: GatewayConfig, specs: list[WorkerSpec]) -> ServingContext:
    if not specs:
        raise ValueError("at least one engine worker is needed")
    names = {policy_for(config, s.model_name) for s in specs}
    names |= {p for p in (config.prefill_policy, config.decode_policy) if p}
    for name in names:
        make_policy(name, index=_PROBE_INDEX)  # unknown names fail here, listing the known ones
    ctx = ServingContext(
        models={},
        registry=WorkerRegistry(),
        retry=retry_policy(config),
        limits=request_limits(config),
        admission=admission(config),
        pd_fallback=config.pd_fallback,
        store=open_store(config.storage or default_storage_url()),
        mcp_config=load_mcp_config(config.mcp_config) if config.mcp_config else None,
        mcp_allow_private=config.allow_private_mcp_urls,
    )
    for spec in specs:
        await add_worker(ctx, config, spec)
    _watch(ctx)
    return ctx


async def probe_fleet(config: GatewayConfig) -> list[WorkerSpec]:
    """The specs of every configured worker, probed here (a process without a supervisor, as
    bench/asgi_gateway.py runs one)."""
    specs: list[WorkerSpec] = []
    known: dict[str, str] = {}
    for url in config.workers:
        engine, spec = await probe_until_ready(
            config, url, connect_worker_engine, known, config.worker_startup_timeout
        )
        await engine.close()
        specs.append(spec)
        known.setdefault(spec.model_name, spec.tokenizer_dir)
    return specs


class _ProbeIndex:
    """Stands in for a prefix index when a policy name is only being checked."""

    def prompt_blocks(self, input_ids: object) -> object:
        return input_ids

    def match(self, input_ids: object, worker_ids: object) -> dict[str, int]:
        return {}

    def record_routed(self, worker_id: str, input_ids: object) -> None:
        pass


_PROBE_INDEX = _ProbeIndex()


def _watch(ctx: ServingContext) -> None:
    """Admission and circuit state, read into the metrics whenever they are rendered."""

    def collect() -> None:
        METRICS.queued.set(ctx.admission.queued)
        METRICS.loop_tasks.set(len(asyncio.all_tasks()))
        for worker in ctx.registry:
            state = worker.circuit.state
            METRICS.circuit_open.set(0.0 if state is CircuitState.CLOSED else 1.0, (worker.url,))
        for model in ctx.models.values():
            index = model.index
            if index is None:
                continue
            stats = index.stats()
            METRICS.kv_index_blocks.set(stats["blocks"], (model.name,))
            METRICS.kv_index_bytes.set(stats["estimated_bytes"], (model.name,))
            for wid in index.workers():
                METRICS.kv_precise.set(1.0 if index.is_precise(wid) else 0.0, (wid,))

    METRICS.registry.collectors.append(collect)
    METRICS.watch_workers(lambda: ctx.registry)
