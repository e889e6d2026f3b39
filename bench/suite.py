"""The benchmark suite behind bench/run.sh: engine floor vs herdsman (1 and N workers) vs SMG.

    python -m bench.suite --mode quick|default|soak|http --smg PATH/TO/smg [--out-dir DIR]

Mode ``http`` compares HTTP servers instead: the same GatewayApp on herdsman's own server and on
uvicorn and granian (bench/asgi_gateway.py), each in one process, beside herdsman with one
gateway process; it writes only its section of docs/benchmarks.md.

Each measurement starts its own engine-sim (so every target meets an empty prefix cache and
the same sequence of requests) and its own gateway, runs one client process (bench.load or
bench.engine_floor) and stops both. Targets are interleaved within each concurrency level, so
background noise on the machine spreads across them rather than landing on one. Results are
JSON files in the output directory; bench.report turns them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from bench import aiperf_client, engine_timing, procstat
from bench.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/qwen3"
BIN = Path(sys.executable).parent
HERDSMAN = str(BIN / "herdsman")
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 3.0

REALISTIC_ENGINE = [
    "--ttft-base-ms", "5", "--prefill-ms-per-1k", "20",
    "--itl-base-ms", "10", "--itl-per-running-ms", "0.02",
    "--tokens-per-message", "1",
]  # fmt: skip
# With prefill free, the sim's prefix cache changes no timing but costs the sim about a quarter
# of its CPU (hashing every prompt's blocks), CPU the gateway would otherwise get.
ZERO_ENGINE = [
    "--ttft-base-ms", "0", "--prefill-ms-per-1k", "0",
    "--itl-base-ms", "0", "--itl-per-running-ms", "0",
    "--tokens-per-message", "1", "--cache-blocks", "0",
]  # fmt: skip

# The same zero-latency engine sending 16 tokens per message: per request the engine and client
# then cost little, and the gateway's own per-request work (chat template, ~2.4k-token encode,
# routing, response framing) is what limits throughput, so 1 vs N processes shows scaling even
# on a machine whose cores the engine and client share.
BATCHED_ZERO_ENGINE = [*ZERO_ENGINE[:-4], "--tokens-per-message", "16", "--cache-blocks", "0"]


@dataclass
class Scenario:
    name: str
    title: str
    engine_args: list[str]
    levels: list[int]
    duration: float
    warmup: float
    # A longer window where few requests complete (concurrency 1 runs ~1 request/s).
    duration_c1: float | None = None
    rss_interval: float = 5.0
    max_tokens: int = 128


@dataclass
class Target:
    name: str
    kind: str  # floor | herdsman | smg | asgi
    workers: int | None = None
    # kind asgi: the HTTP server bench/asgi_gateway.py runs the app on.
    server: str | None = None
    # kind herdsman: flags beyond --workers.
    flags: tuple[str, ...] = ()


# Run only when named in --targets: the gateway serving in its supervisor's own process.
INLINE_TARGET = Target("herdsman-inline", "herdsman", None, flags=("--start-method", "inline"))

# The HTTP server comparison: the same app, one process each.
HTTP_SERVER_TARGETS = [
    Target("own-server", "asgi", server="herdsman"),
    Target("uvicorn", "asgi", server="uvicorn"),
    Target("granian", "asgi", server="granian"),
]


@dataclass
class Plan:
    mode: str
    scenarios: list[Scenario]
    targets: list[Target]
    notes: list[str] = field(default_factory=list)
    # Every measurement this many times, the targets interleaved within each round: the spread
    # between rounds shows how much background load moved the numbers.
    rounds: int = 1
    # Scenario name -> the concurrency levels at which aiperf measures each gateway too.
    aiperf_levels: dict[str, list[int]] = field(default_factory=dict)


def make_plan(mode: str, nproc: int, has_workers_flag: bool, only: set[str] | None) -> Plan:
    if has_workers_flag:
        gateways = [Target("herdsman-w1", "herdsman", 1)]
        if nproc > 1:
            gateways.append(Target(f"herdsman-w{nproc}", "herdsman", nproc))
    else:
        gateways = [Target("herdsman", "herdsman", None)]
    targets = [Target("floor", "floor"), *gateways, Target("smg", "smg")]
    if mode == "http":
        # Added TTFT: one request at a time on an engine with no latency of its own, short
        # outputs (many requests per window). CPU per request: saturated and engine-paced load.
        scenarios = [
            Scenario("http-ttft", "c=1, engine with zero latency, 16 output tokens",
                     ZERO_ENGINE, [1], duration=10.0, warmup=2.0, max_tokens=16),
            Scenario("http-gateway-bound", "Gateway-bound: engine with zero latency",
                     ZERO_ENGINE, [64], duration=10.0, warmup=2.0),
            Scenario("http-standard", "Standard workload, realistic engine",
                     REALISTIC_ENGINE, [32], duration=10.0, warmup=2.0),
        ]  # fmt: skip
        targets = [Target("floor", "floor"), gateways[0], *HTTP_SERVER_TARGETS]
        rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
        if only:
            targets = [t for t in targets if t.name in only or t.kind in only]
        return Plan(mode, scenarios, targets, rounds=rounds)
    elif mode == "quick":
        scenarios = [
            Scenario("standard", "Standard workload, realistic engine", REALISTIC_ENGINE,
                     [1, 32], duration=6.0, warmup=1.5, duration_c1=8.0),
            Scenario("gateway-bound", "Gateway-bound: engine with zero latency", ZERO_ENGINE,
                     [128], duration=8.0, warmup=2.0),
            Scenario("prompt-bound", "Gateway-bound, 16 tokens per engine message",
                     BATCHED_ZERO_ENGINE, [64], duration=8.0, warmup=2.0),
        ]  # fmt: skip
    elif mode == "soak":
        seconds = float(os.environ.get("BENCH_SOAK_SECONDS", "1200"))
        scenarios = [
            Scenario("soak", f"Soak: standard workload for {seconds:.0f}s per gateway",
                     REALISTIC_ENGINE, [64], duration=seconds, warmup=5.0, rss_interval=30.0),
        ]  # fmt: skip
        targets = [t for t in targets if t.kind != "floor"]
    else:
        scenarios = [
            Scenario("standard", "Standard workload, realistic engine", REALISTIC_ENGINE,
                     [1, 8, 32, 64], duration=20.0, warmup=3.0, duration_c1=30.0),
            Scenario("gateway-bound", "Gateway-bound: engine with zero latency", ZERO_ENGINE,
                     [128], duration=30.0, warmup=3.0),
            Scenario("prompt-bound", "Gateway-bound, 16 tokens per engine message",
                     BATCHED_ZERO_ENGINE, [64], duration=30.0, warmup=3.0),
        ]  # fmt: skip
    if only:
        targets = [t for t in targets if t.name in only or t.kind in only]
        if INLINE_TARGET.name in only:  # before SMG, as the other gateways
            smg = [i for i, t in enumerate(targets) if t.kind == "smg"]
            targets.insert(smg[0] if smg else len(targets), INLINE_TARGET)
    # The second client, on the standard workload: every level by default, one in quick mode.
    aiperf_levels = {"quick": {"standard": [32]}, "default": {"standard": [1, 8, 32, 64]}}
    return Plan(mode, scenarios, targets, aiperf_levels=aiperf_levels.get(mode, {}))


# ---- processes -------------------------------------------------------------------------------


class Server:
    """A child in its own process group (so one killpg reaches a supervisor's workers too)."""

    registry: ClassVar[Path | None] = None
    live: ClassVar[dict[int, Server]] = {}

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.pid = self.proc.pid
        Server.live[self.pid] = self
        Server._write_registry()

    @classmethod
    def _write_registry(cls) -> None:
        # bench/run.sh kills these process groups if the suite itself dies.
        if cls.registry is not None:
            cls.registry.write_text("".join(f"{pid}\n" for pid in cls.live))

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = READY_TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> dict[str, Any]:
        """SIGTERM the group, SIGKILL what is left after a grace period; says which it took."""
        started = time.monotonic()
        forced = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            forced = True
        # Workers of a supervisor may outlive it; the group catches them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
            forced = forced or self.proc.poll() is None
        self.proc.wait()
        Server.live.pop(self.pid, None)
        Server._write_registry()
        return {"stop_s": round(time.monotonic() - started, 2), "sigkill": forced}

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls.live.values()):
            server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def probe_chat(base: str, server: Server) -> str:
    """One small chat completion: the gateway works end to end and answers in plain content.

    Retried while the gateway answers 503: a gateway may listen (SMG even lists the model)
    before its health checks have admitted the engine worker.
    """
    body = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "Hello there."}],
        "max_tokens": 4,
        "ignore_eos": True,
        "separate_reasoning": False,
    }
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            reply = http_json(f"{base}/v1/chat/completions", body, timeout=30.0)
            break
        except (urllib.error.HTTPError, OSError) as exc:
            status = exc.code if isinstance(exc, urllib.error.HTTPError) else None
            if status not in (None, 503) or time.monotonic() > deadline:
                message = f"{server.name} probe failed: {exc}\n{server.log_tail()}"
                raise RuntimeError(message) from exc
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}") from exc
            time.sleep(0.2)
    message = reply["choices"][0]["message"]
    if not message.get("content") or message.get("reasoning_content"):
        raise RuntimeError(f"{base}: expected plain content, got {message}")
    return str(message["content"])


def start_engine(args: list[str], log: Path, timing: Path | None = None) -> tuple[Server, int]:
    argv = [HERDSMAN, "engine-sim", "--model-path", MODEL, "--backend", "vllm", "--port", "0"]
    if timing is not None:  # the engine's own TTFT (bench/engine_timing.py)
        argv += ["--timing-log", str(timing)]
    server = Server("engine-sim", [*argv, *args, "--log-level", "WARNING"], log)
    match = server.wait_for_line(re.compile(r"engine-sim listening on [\d.]+:(\d+)"))
    return server, int(match.group(1))


def start_gateway(target: Target, engine_port: int, smg: str, log: Path) -> tuple[Server, str]:
    worker = f"grpc://127.0.0.1:{engine_port}"
    if target.kind == "herdsman":
        argv = [HERDSMAN, "serve", "--worker", worker, "--model-path", MODEL, "--host"]
        argv += ["127.0.0.1", "--port", "0", "--log-level", "warning"]
        if target.workers is not None:
            argv += ["--workers", str(target.workers)]
        argv += [*target.flags, *shlex.split(os.environ.get("BENCH_HERDSMAN_ARGS", ""))]
        server = Server(target.name, argv, log)
        match = server.wait_for_line(re.compile(r"herdsman listening on (http://[\d.]+:\d+)"))
        base = match.group(1)
    elif target.kind == "asgi":
        assert target.server is not None
        port = free_port()
        argv = [sys.executable, "-m", "bench.asgi_gateway", "--server", target.server]
        argv += ["--port", str(port), "--", "--worker", worker, "--model-path", MODEL]
        argv += ["--log-level", "warning", *shlex.split(os.environ.get("BENCH_HERDSMAN_ARGS", ""))]
        server = Server(target.name, argv, log)
        base = f"http://127.0.0.1:{port}"
        wait_for_models(base, server)
    else:
        port = free_port()
        argv = [smg, "launch", "--worker-urls", worker, "--model-path", MODEL]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warn"]
        # SMG would otherwise try the Hugging Face hub; a closed local port fails fast.
        server = Server(target.name, argv, log, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
        base = f"http://127.0.0.1:{port}"
        wait_for_models(base, server)
    probe_chat(base, server)
    return server, base


def wait_for_models(base: str, server: Server) -> None:
    """Until the gateway lists the model (it listens only once its engine is connected)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError, ValueError):
            if http_json(f"{base}/v1/models", timeout=2.0).get("data"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} not ready:\n{server.log_tail()}")
        time.sleep(0.1)


# ---- the run ---------------------------------------------------------------------------------


def machine_busy(seconds: float) -> float:
    busy0, total0 = procstat.machine_cpu()
    time.sleep(seconds)
    busy1, total1 = procstat.machine_cpu()
    return (busy1 - busy0) / max(total1 - total0, 1)


def run_one(
    plan_index: int,
    scenario: Scenario,
    level_index: int,
    concurrency: int,
    target: Target,
    smg: str,
    out_dir: Path,
    round_index: int | None = None,
) -> dict[str, Any]:
    stem = f"{scenario.name}-c{concurrency}-{target.name}"
    if round_index is not None:
        stem += f"-r{round_index + 1}"
    logs = out_dir / "logs"
    timing = logs / f"{stem}.engine-timing.log"
    engine, engine_port = start_engine(scenario.engine_args, logs / f"{stem}.engine.log", timing)
    gateway: Server | None = None
    stops: dict[str, Any] = {}
    try:
        duration = scenario.duration
        if concurrency == 1 and scenario.duration_c1:
            duration = scenario.duration_c1
        common = [
            "--label", target.name, "--concurrency", str(concurrency),
            "--duration", str(duration), "--warmup", str(scenario.warmup),
            # Enough to never cut the window short; the bound is there so the loop has one.
            "--max-requests", str(int(duration * 2000) + 1000),
            "--max-tokens", str(scenario.max_tokens),
            "--conversation-offset", str(plan_index * 10_000_000 + level_index * 1_000_000),
            "--engine-pid", str(engine.pid), "--rss-interval", str(scenario.rss_interval),
            "--json-out", str(out_dir / f"{stem}.json"),
        ]  # fmt: skip
        if target.kind == "floor":
            client = [sys.executable, "-m", "bench.engine_floor"]
            client += ["--target", f"127.0.0.1:{engine_port}", *common]
        else:
            gateway, base = start_gateway(target, engine_port, smg, logs / f"{stem}.gateway.log")
            client = [sys.executable, "-m", "bench.load", "--url", base, *common]
            client += ["--gateway-pid", str(gateway.pid)]
        limit = scenario.warmup + duration + 120
        done = subprocess.run(
            client, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
        )
        (logs / f"{stem}.client.log").write_text(done.stdout + done.stderr)
        sys.stderr.write(done.stderr)
        if done.returncode != 0 and not (out_dir / f"{stem}.json").exists():
            raise RuntimeError(f"client failed ({done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads((out_dir / f"{stem}.json").read_text())
    finally:
        if gateway is not None:
            stops["gateway"] = gateway.stop()
        stops["engine"] = engine.stop()
    result.update(
        scenario=scenario.name,
        scenario_title=scenario.title,
        target=target.name,
        target_kind=target.kind,
        round=None if round_index is None else round_index + 1,
        workers=target.workers,
        engine_timing=engine_timing.summarize(timing, skip_s=scenario.warmup),
        commands={
            "engine": _shell(engine.argv),
            "gateway": _shell(gateway.argv) if gateway else None,
            "client": _shell(client),
        },
        stop=stops,
    )
    (out_dir / f"{stem}.json").write_text(json.dumps(result) + "\n")
    return result


_workload: Workload | None = None


def standard_workload() -> Workload:
    """bench/workload.py's conversations, built once per suite (aiperf datasets are cut from it)."""
    global _workload
    if _workload is None:
        _workload = Workload(ROOT / MODEL / "tokenizer.json")
    return _workload


def run_aiperf_one(
    plan_index: int,
    scenario: Scenario,
    level_index: int,
    concurrency: int,
    target: Target,
    smg: str,
    out_dir: Path,
    aiperf: Path,
) -> dict[str, Any]:
    """The measurement run_one makes, with aiperf as the client: a fresh engine-sim and gateway,
    the same conversations (same offset) sent as verbatim request bodies."""
    stem = f"{scenario.name}-c{concurrency}-{target.name}"
    results, logs = out_dir / "aiperf", out_dir / "logs"
    results.mkdir(exist_ok=True)
    duration = scenario.duration
    if concurrency == 1 and scenario.duration_c1:
        duration = scenario.duration_c1
    dataset = results / f"{stem}.dataset"
    first = plan_index * 10_000_000 + level_index * 1_000_000
    count = aiperf_client.conversations_needed(concurrency, scenario.warmup + duration)
    summary = aiperf_client.write_dataset(
        dataset, standard_workload(), first, count, max_tokens=scenario.max_tokens
    )
    make_dataset = [
        sys.executable, "-m", "bench.aiperf_client", "dataset", str(dataset),
        "--conversations", str(count), "--conversation-offset", str(first),
        "--max-tokens", str(scenario.max_tokens),
    ]  # fmt: skip
    timing = logs / f"{stem}.aiperf.engine-timing.log"
    engine, engine_port = start_engine(
        scenario.engine_args, logs / f"{stem}.aiperf.engine.log", timing
    )
    gateway: Server | None = None
    stops: dict[str, Any] = {}
    try:
        gateway, base = start_gateway(target, engine_port, smg, logs / f"{stem}.aiperf.gateway.log")
        run = aiperf_client.AiperfRun(
            label=target.name, url=base, concurrency=concurrency, duration=duration,
            warmup=scenario.warmup, dataset=dataset, artifacts=results / f"{stem}.artifacts",
            tokenizer=ROOT / MODEL, gateway_pid=gateway.pid, engine_pid=engine.pid,
        )  # fmt: skip
        limit = scenario.warmup + duration + run.grace + 120
        result = aiperf_client.run_aiperf(run, aiperf, logs / f"{stem}.aiperf.log", limit)
    finally:
        if gateway is not None:
            stops["gateway"] = gateway.stop()
        stops["engine"] = engine.stop()
        # Tens of MB of request bodies, rebuilt from the seed at will.
        shutil.rmtree(dataset, ignore_errors=True)
    command = result.pop("command")
    result.update(
        scenario=scenario.name,
        scenario_title=scenario.title,
        target=target.name,
        target_kind=target.kind,
        workers=target.workers,
        engine_timing=engine_timing.summarize(timing, window_ns=tuple(result["window_ns"])),
        dataset=summary,
        commands={
            "engine": _shell(engine.argv),
            "gateway": _shell(gateway.argv) if gateway else None,
            "dataset": _shell(make_dataset),
            "client": "env -u HF_HUB_OFFLINE AIPERF_DATASET_MMAP_CACHE_ENABLED=false "
            + _shell(command),
        },
        stop=stops,
    )
    (results / f"{stem}.json").write_text(json.dumps(result) + "\n")
    print(aiperf_client.human_line(result), file=sys.stderr)
    return result


def aiperf_level(
    plan: Plan,
    plan_index: int,
    scenario: Scenario,
    level_index: int,
    concurrency: int,
    smg: str,
    out_dir: Path,
    aiperf: Path,
) -> list[str]:
    """aiperf against every gateway of the plan at one level; the failures, described."""
    failures = []
    for target in plan.targets:
        if target.kind == "floor":
            continue
        try:
            run_aiperf_one(
                plan_index, scenario, level_index, concurrency, target, smg, out_dir, aiperf
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            # The second client failing must not lose the first one's results.
            print(f"bench: aiperf {target.name} c={concurrency}: {exc}", file=sys.stderr)
            failures.append(f"{scenario.name} c={concurrency} {target.name}: {str(exc)[:500]}")
    return failures


def clients_from(text: str, mode: str, aiperf: Path) -> tuple[set[str], str | None]:
    """The load clients to run (BENCH_CLIENTS) and a note when aiperf had to be left out."""
    clients = {c.strip() for c in text.split(",") if c.strip()} or {"own", "aiperf"}
    unknown = clients - {"own", "aiperf"}
    if unknown:
        raise SystemExit(f"bench: unknown client(s) {', '.join(sorted(unknown))} (own, aiperf)")
    if "aiperf" not in clients or mode not in ("quick", "default"):
        return clients - {"aiperf"}, None
    version = aiperf_client.aiperf_version(aiperf)
    if version is None:
        note = f"aiperf skipped: not installed at {aiperf} (bench/run.sh installs it)"
        return clients - {"aiperf"}, note
    if version != aiperf_client.AIPERF_VERSION:
        note = f"aiperf {version} at {aiperf}, not the pinned {aiperf_client.AIPERF_VERSION}"
        return clients, note
    return clients, None


def _shell(argv: list[str]) -> str:
    shown = []
    for arg in argv:
        arg = arg.replace(str(ROOT) + "/", "").replace(str(Path.home()), "~")
        shown.append(arg if re.fullmatch(r"[\w@%+=:,./~-]+", arg) else f"'{arg}'")
    return " ".join(shown)


def versions(smg: str) -> dict[str, str]:
    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    rev = run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if run(["git", "status", "--porcelain", "--", "src"]):
        rev += " + uncommitted changes in src/"
    smg_python = str(Path(smg).parent / "python")
    smg_version = ""
    with contextlib.suppress(OSError):  # no SMG installed: the HTTP server comparison runs none
        smg_version = run(
            [smg_python, "-c", "import importlib.metadata as m; print(m.version('smg'))"]
        )
    found = {"herdsman": rev, "smg": smg_version or "unknown", "python": sys.version.split()[0]}
    for package in ("uvicorn", "granian", "httptools", "uvloop"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def smg_defaults(smg: str) -> dict[str, str]:
    """Defaults of the SMG flags the report names, read from `smg launch --help`."""
    text = subprocess.run(
        [smg, "launch", "--help"], capture_output=True, text=True, check=False
    ).stdout
    found = {}
    for flag in ("tokenizer-cache-enable-l0", "tokenizer-cache-enable-l1", "reasoning-parser"):
        # The flag's own entry in the options list (the usage block names it too), up to the
        # next option.
        match = re.search(rf"^ {{2}}--{flag}\b(.*?)(?=^ {{2}}-)", text, re.S | re.M)
        default = re.search(r"\(default: ([^)]*)\)", match.group(1)) if match else None
        found[flag] = default.group(1) if default else "?"
    return found


def has_workers_flag() -> bool:
    done = subprocess.run([HERDSMAN, "serve", "--help"], capture_output=True, text=True)
    return "--workers" in done.stdout


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("--mode", choices=("quick", "default", "soak", "http"), default="default")
    parser.add_argument("--smg", required=True, help="path of the smg executable")
    parser.add_argument("--out-dir", default=None, help="default: bench/results/<timestamp>")
    parser.add_argument(
        "--docs", default=os.environ.get("BENCH_DOCS", str(ROOT / "docs/benchmarks.md"))
    )
    parser.add_argument(
        "--targets", default=os.environ.get("BENCH_TARGETS", ""), help="comma list to run only"
    )
    parser.add_argument(
        "--clients",
        default=os.environ.get("BENCH_CLIENTS", ""),
        help="load clients, comma list of own and aiperf (default both; aiperf only in quick "
        "and default mode, on the standard workload)",
    )
    parser.add_argument(
        "--aiperf", default=str(aiperf_client.aiperf_path()), help="path of the aiperf executable"
    )
    args = parser.parse_args(argv)

    started_at = datetime.now(UTC)
    out_dir = Path(args.out_dir or ROOT / "bench/results" / started_at.strftime("%Y%m%d-%H%M%S"))
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    Server.registry = out_dir / "server-pids"
    # SIGTERM from run.sh's trap unwinds through the finally below, which stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    nproc = os.cpu_count() or 1
    workers_flag = has_workers_flag()
    only = {t.strip() for t in args.targets.split(",") if t.strip()} or None
    plan = make_plan(args.mode, nproc, workers_flag, only)
    aiperf = Path(args.aiperf)
    clients, client_note = clients_from(args.clients, args.mode, aiperf)
    if client_note:
        print(f"bench: {client_note}", file=sys.stderr)
    if "aiperf" not in clients:
        plan.aiperf_levels = {}
    elif os.environ.get("BENCH_AIPERF_LEVELS"):  # e.g. "64": only these of the plan's levels
        chosen = {int(level) for level in os.environ["BENCH_AIPERF_LEVELS"].split(",")}
        plan.aiperf_levels = {
            name: [level for level in levels if level in chosen]
            for name, levels in plan.aiperf_levels.items()
        }
    meta = {
        "started": started_at.isoformat(timespec="seconds"),
        "mode": args.mode,
        "machine": {"nproc": nproc, "cpu_model": cpu_model(), "kernel": os.uname().release},
        "versions": versions(args.smg),
        "smg_defaults": smg_defaults(args.smg)
        if any(t.kind == "smg" for t in plan.targets)
        else {},
        "herdsman_workers_flag": workers_flag,
        "background_busy_before": round(machine_busy(2.0), 3),
        "interfaces": [
            line.split(":")[0].strip()
            for line in Path("/proc/net/dev").read_text().splitlines()[2:]
        ],
        "scenarios": [s.__dict__ for s in plan.scenarios],
        "targets": [t.__dict__ for t in plan.targets],
        "rounds": plan.rounds,
        "clients": sorted(clients),
        "client_note": client_note,
        "aiperf_levels": plan.aiperf_levels,
        "invocation": os.environ.get("BENCH_INVOCATION", "python -m bench.suite"),
    }
    print(
        f"bench: mode={args.mode} targets={','.join(t.name for t in plan.targets)} "
        f"clients={','.join(sorted(clients))} "
        f"background busy {meta['background_busy_before']:.0%} -> {out_dir}",
        file=sys.stderr,
    )
    try:
        for plan_index, scenario in enumerate(plan.scenarios):
            for level_index, concurrency in enumerate(scenario.levels):
                for round_index in range(plan.rounds):
                    for target in plan.targets if "own" in clients else []:
                        run_one(
                            plan_index, scenario, level_index, concurrency, target, args.smg,
                            out_dir, round_index if plan.rounds > 1 else None,
                        )  # fmt: skip
                if concurrency in plan.aiperf_levels.get(scenario.name, []):
                    failures = aiperf_level(
                        plan, plan_index, scenario, level_index, concurrency, args.smg, out_dir,
                        aiperf,
                    )  # fmt: skip
                    meta.setdefault("aiperf_failures", []).extend(failures)
    finally:
        Server.stop_all()
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["elapsed_s"] = round((datetime.now(UTC) - started_at).total_seconds(), 1)
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    from bench.report import write_report

    write_report(out_dir, Path(args.docs))
    # Each run keeps its own rendering beside its raw results.
    write_report(out_dir, out_dir / "benchmarks.md")
    print(f"bench: wrote {args.docs} ({meta['elapsed_s']:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
