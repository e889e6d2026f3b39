"""Assembles and runs one engine-sim gRPC server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable

import grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc, vllm_engine_pb2_grpc
from tokenizers import Tokenizer

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.dp_engine import DataParallelEngine
from herdsman.sim.model_card import load_model_card
from herdsman.sim.options import SimOptions
from herdsman.sim.pooling import PoolingModel
from herdsman.sim.sglang_servicer import SglangSimServicer
from herdsman.sim.stats_file import StatsFile
from herdsman.sim.text_source import TextSource
from herdsman.sim.tokenizer_bundle import LazyTokenizerBundle
from herdsman.sim.vllm_servicer import VllmSimServicer

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 1.0
_SERVER_OPTIONS = [
    # Two sims must never silently share a fixed port.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # gRPC core CANCELs calls arriving while more than 1000 wait for the Python server to pick
    # them up; a burst of a few thousand streams from a benchmark would hit that.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


def server_options(options: SimOptions) -> list[tuple[str, int]]:
    extra = []
    if options.max_connection_age_ms is not None:
        extra.append(("grpc.max_connection_age_ms", options.max_connection_age_ms))
    if options.max_connection_age_grace_ms is not None:
        extra.append(("grpc.max_connection_age_grace_ms", options.max_connection_age_grace_ms))
    if options.max_concurrent_streams is not None:
        extra.append(("grpc.max_concurrent_streams", options.max_concurrent_streams))
    return _SERVER_OPTIONS + extra


def server_credentials(options: SimOptions) -> grpc.ServerCredentials | None:
    if options.tls_cert is None:
        return None
    if options.tls_key is None:
        raise ValueError("--tls-cert needs --tls-key")
    client_ca = options.tls_client_ca.read_bytes() if options.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(options.tls_key.read_bytes(), options.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def listening_line(host: str, port: int, backend: str, *, bootstrap_port: int | None = None) -> str:
    """The one stdout line a parent process waits for to learn the bound port (and a prefill's
    handoff port, which --bootstrap-port 0 leaves to the system)."""
    line = f"engine-sim listening on {host}:{port} backend={backend}"
    if bootstrap_port is not None:
        line += f" bootstrap_port={bootstrap_port}"
    return line


def options_problem(options: SimOptions) -> str | None:
    """Why the settings cannot run together, if they cannot."""
    if options.role == "prefill" and options.bootstrap_port is None:
        return "--role prefill needs --bootstrap-port (the port decodes fetch KV from)"
    if options.response_text_after_tool is not None and options.response_text is None:
        return "--response-text-after-tool needs --response-text (the answer before the tool)"
    try:
        PoolingModel.from_options(options)
    except ValueError as exc:
        return str(exc)
    return None


async def serve(options: SimOptions, *, on_listening: Callable[[int], None] | None = None) -> int:
    problem = options_problem(options)
    if problem is not None:
        print(f"engine-sim: {problem}", file=sys.stderr)
        return 2
    model_dir = options.model_path
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        print(f"engine-sim: {tokenizer_file} not found", file=sys.stderr)
        return 2
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    card = load_model_card(
        model_dir,
        tokenizer,
        served_model_name=options.served_model_name,
        max_model_len=options.max_model_len,
    )
    pooling = PoolingModel.from_options(options)
    if options.architecture is not None:
        card = dataclasses.replace(card, architectures=(options.architecture,))
    elif pooling is not None:
        card = dataclasses.replace(card, architectures=(pooling.architecture,))
    abort_log = AbortLog(options.abort_log)
    if options.response_text is not None:
        source = TextSource(tokenizer, options.response_text)
        source.sentence_starts = [0]
        if options.eos_after is None:
            options = dataclasses.replace(options, eos_after=len(source.ids))
        if options.response_text_after_tool is not None:
            try:
                source.add_after_tool(tokenizer, options.response_text_after_tool)
            except ValueError as exc:
                print(f"engine-sim: --response-text-after-tool: {exc}", file=sys.stderr)
                return 2
    else:
        source = TextSource(tokenizer)
    engine = DataParallelEngine(options, card, source, abort_log)
    bundle = LazyTokenizerBundle(model_dir)

    try:
        credentials = server_credentials(options)
    except (OSError, ValueError) as exc:
        print(f"engine-sim: TLS: {exc}", file=sys.stderr)
        return 2
    server = grpc.aio.server(options=server_options(options))
    if options.backend == "sglang":
        sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(
            SglangSimServicer(engine, tokenizer, bundle), server
        )
    else:
        vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(
            VllmSimServicer(engine, tokenizer, bundle), server
        )
    address = f"[{options.host}]" if ":" in options.host else options.host
    try:
        if credentials is None:
            port = server.add_insecure_port(f"{address}:{options.port}")
        else:
            port = server.add_secure_port(f"{address}:{options.port}", credentials)
    except RuntimeError as exc:
        print(f"engine-sim: cannot bind {address}:{options.port}: {exc}", file=sys.stderr)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stats_file = None
    if options.stats_file is not None:
        stats_file = StatsFile(options.stats_file, engine)
        loop.add_signal_handler(signal.SIGUSR1, stats_file.write)

    handoffs = engine.handoffs
    try:
        await handoffs.start(port)
    except OSError as exc:
        address = f"{options.host}:{options.bootstrap_port}"
        print(f"engine-sim: cannot bind bootstrap port {address}: {exc}", file=sys.stderr)
        return 1
    await server.start()
    engine.start()
    bootstrap_port = handoffs.bootstrap_port if options.role == "prefill" else None
    print(
        listening_line(options.host, port, options.backend, bootstrap_port=bootstrap_port),
        flush=True,
    )
    logger.info(
        "serving %s (%s), max context %d, eos %s, loop %s",
        card.served_model_name,
        card.model_path,
        card.max_context_length,
        list(card.eos_token_ids),
        type(loop).__module__,
    )
    if on_listening is not None:
        on_listening(port)
    try:
        await stop.wait()
    finally:
        await server.stop(_SHUTDOWN_GRACE_S)
        await handoffs.stop()
        await engine.stop()
        abort_log.close()
        if stats_file is not None:
            stats_file.write()
            loop.remove_signal_handler(signal.SIGUSR1)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
