"""``herdsman serve`` (the gateway) and ``herdsman engine-sim`` (the simulated engine)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from herdsman.config import GatewayConfig


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--worker",
        dest="workers",
        action="append",
        default=[],
        metavar="URL",
        help="engine worker, grpc://HOST:PORT (repeatable)",
    )
    p.add_argument(
        "--workers",
        dest="processes",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="gateway processes, each with its own event loop (default: CPU count)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "vllm", "sglang"],
        help="worker protocol; auto asks the worker",
    )
    p.add_argument(
        "--grpc-transport",
        default="native",
        choices=["native", "grpcio"],
        help="gRPC client: herdsman's lean HTTP/2 client (native) or grpcio's asyncio stack",
    )
    p.add_argument("--model-path", help="local model directory (tokenizer.json, ...)")
    p.add_argument("--tokenizer-path", help="local tokenizer directory; overrides --model-path")
    p.add_argument("--served-model-name", help="model name clients use (default: the engine's)")
    p.add_argument("--chat-template", help="a Jinja chat template, or a file holding one")
    p.add_argument(
        "--tokenizer-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help="the L0/L1 tokenization cache; auto: on unless the fastokens backend encodes "
        "(it outruns the cache: see docs/benchmarks-tokenizer.md)",
    )
    p.add_argument(
        "--tokenizer-cache-l0-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="exact-prompt tokenization cache budget per process (0 disables)",
    )
    p.add_argument(
        "--tokenizer-cache-l1-bytes",
        type=int,
        default=128 * 1024 * 1024,
        help="segment tokenization cache budget per process (0 disables)",
    )
    p.add_argument(
        "--tokenizer-cache-shared-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="segment cache all gateway processes share, in /dev/shm (0 disables)",
    )
    p.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="let image URLs reach private, loopback and link-local addresses (never metadata)",
    )
    p.add_argument(
        "--image-url-domain",
        dest="image_url_domains",
        action="append",
        default=None,
        metavar="DOMAIN",
        help="only fetch images from these hosts (repeatable; '.example.com' for subdomains)",
    )
    p.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--policy", default="round_robin", help="routing policy")
    p.add_argument(
        "--reasoning-parser",
        default="auto",
        help="reasoning parser name (vLLM's or SMG's), 'auto' from the model, or 'none'",
    )
    p.add_argument(
        "--tool-call-parser",
        default="auto",
        help="tool-call parser name (vLLM's or SMG's), 'auto' from the model, or 'none'",
    )
    p.add_argument("--health-check-interval", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--health-check-timeout", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument(
        "--no-warm-spare",
        action="store_true",
        help="do not keep a loaded spare process to take over from one that dies",
    )
    p.add_argument(
        "--engine-sim",
        action="store_true",
        help="start a simulated engine on --model-path and serve in front of it",
    )
    p.add_argument(
        "--engine-sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the embedded engine-sim (repeatable)",
    )
    p.add_argument("--log-level", default="info")


def _config(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        workers=list(args.workers),
        host=args.host,
        port=args.port,
        backend=args.backend,
        grpc_transport=args.grpc_transport,
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        served_model_name=args.served_model_name,
        chat_template=args.chat_template,
        tokenizer_cache=args.tokenizer_cache,
        tokenizer_cache_l0_bytes=args.tokenizer_cache_l0_bytes,
        tokenizer_cache_l1_bytes=args.tokenizer_cache_l1_bytes,
        tokenizer_cache_shared_bytes=args.tokenizer_cache_shared_bytes,
        policy=args.policy,
        allow_private_image_urls=args.allow_private_image_urls,
        image_url_domains=args.image_url_domains,
        max_image_bytes=args.max_image_bytes,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        health_check_interval=args.health_check_interval,
        health_check_timeout=args.health_check_timeout,
        max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout,
        warm_spare=not args.no_warm_spare,
        log_level=args.log_level,
    )


async def _serve(args: argparse.Namespace) -> None:
    from herdsman.serve.embedded import EmbeddedEngineSim
    from herdsman.serve.supervisor import run_supervisor

    config = _config(args)
    sim: EmbeddedEngineSim | None = None
    if args.engine_sim:
        if not args.model_path:
            raise SystemExit("--engine-sim needs --model-path")
        backend = "vllm" if args.backend == "auto" else args.backend
        sim = EmbeddedEngineSim(args.model_path, backend, args.engine_sim_arg)
        config.workers.append(await sim.start())
    try:
        await run_supervisor(config, max(1, args.processes))
    finally:
        if sim is not None:
            await sim.stop()


def _run_serve(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.workers and not args.engine_sim:
        raise SystemExit("herdsman serve needs --worker grpc://HOST:PORT (or --engine-sim)")
    uvloop.run(_serve(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herdsman", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    _add_serve_arguments(serve)
    serve.set_defaults(run=_run_serve)

    from herdsman.sim import cli as sim_cli

    sim = sub.add_parser("engine-sim", help="run the simulated engine")
    sim_cli.add_arguments(sim)
    sim.set_defaults(run=sim_cli.run)

    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
