"""The supervisor stays small: `herdsman serve` up to the supervisor imports none of the serving
code (its gateway processes do), so its memory is the interpreter's, the engine clients' and
little more (herdsman.serve.supervisor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Modules (and their submodules) the supervisor must not import.
SERVING_ONLY = (
    "herdsman.api",
    "herdsman.pipeline",
    "herdsman.multimodal",
    "herdsman.parsers",
    "herdsman.tokenizer",
    "herdsman.serve.gateway",
    "herdsman.serve.context",
    "herdsman.sim.server",
    "numpy",
    "PIL",
    "jinja2",
    "tokenizers",
    "fastokens",
    "prometheus_client",
    "yaml",
)


def _imported(script: str) -> set[str]:
    """The modules a fresh interpreter holds after ``script`` (which prints them as JSON)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env = {k: v for k, v in env.items() if not k.startswith("HERDSMAN_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _serving_only(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == s or m.startswith(f"{s}.") for s in SERVING_ONLY))


def test_herdsman_serve_up_to_the_supervisor_imports_no_serving_code() -> None:
    # `herdsman serve` as far as running the supervisor: the CLI parses its arguments (building
    # every subcommand's parser) and imports what _serve imports.
    modules = _imported(
        """
        import json, sys
        from herdsman import cli
        from herdsman.serve.options_config import config_from_args

        def run(args):
            import herdsman.serve.cpus, herdsman.serve.embedded, herdsman.serve.supervisor
            config_from_args(args)
            print(json.dumps(sorted(sys.modules)))

        cli._run_serve = run
        cli.main(["serve", "--worker", "grpc://127.0.0.1:1", "--model-path", "m"])
        """
    )
    assert "herdsman.serve.supervisor" in modules
    assert _serving_only(modules) == []
    # It probes the engines over the native transport: grpcio (~20 MB) stays out.
    assert "grpc" not in modules


def test_the_gateway_process_target_imports_the_serving_code_when_it_runs() -> None:
    # Pickled by reference into a spawned or forked process: its module alone is small.
    modules = _imported(
        """
        import json, sys
        from herdsman.serve.entry import gateway_process
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert _serving_only(modules) == []
