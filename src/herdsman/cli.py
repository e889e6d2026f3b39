"""``herdsman serve`` (the gateway) and ``herdsman engine-sim`` (the simulated engine)."""

from __future__ import annotations

import argparse
import logging
import sys

from herdsman import settings
from herdsman.serve.options import add_serve_arguments
from herdsman.serve.options_config import config_from_args


async def _serve(args: argparse.Namespace) -> None:
    from herdsman.serve.cpus import available_cpus
    from herdsman.serve.embedded import EmbeddedEngineSim
    from herdsman.serve.supervisor import run_supervisor

    config = config_from_args(args)
    sim: EmbeddedEngineSim | None = None
    if args.engine_sim:
        if not args.model_path:
            raise SystemExit("--engine-sim needs --model-path")
        backend = "vllm" if args.backend == "auto" else args.backend
        sim = EmbeddedEngineSim(args.model_path, backend, args.engine_sim_arg)
        config.workers.append(await sim.start())
    if config.start_method == "inline":
        # One process serves: the supervisor's own.
        config.processes = 1
    else:
        processes = args.processes if args.processes is not None else available_cpus()
        config.processes = max(1, processes)
    try:
        await run_supervisor(config, config.processes)
    finally:
        if sim is not None:
            await sim.stop()


def _run_serve(args: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    dynamic = args.service_discovery or args.state_url
    if not (args.workers or args.prefill or args.decode or args.engine_sim or dynamic):
        raise SystemExit("herdsman serve needs --worker grpc://HOST:PORT (or --engine-sim)")
    if args.service_discovery and not args.discovery_selector:
        raise SystemExit("--service-discovery needs --selector LABELS")
    if args.start_method == "inline" and (args.processes or 1) != 1:
        raise SystemExit("--start-method inline serves in one process: --workers 1 or none")
    if args.start_method == "inline" and args.warm_spare:
        raise SystemExit("--start-method inline keeps no warm spare: one process serves")
    uvloop.run(_serve(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herdsman", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    add_serve_arguments(serve)
    settings.add_config_option(serve)  # --config FILE, and HERDSMAN_* for every option
    serve.set_defaults(run=_run_serve)
    settings.add_show_command(sub, add_serve_arguments)  # herdsman config show

    from herdsman.sim import cli as sim_cli

    sim = sub.add_parser("engine-sim", help="run the simulated engine")
    sim_cli.add_arguments(sim)
    sim.set_defaults(run=sim_cli.run)

    args = settings.parse_args(parser, argv)  # defaults < config file < environment < flags
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
