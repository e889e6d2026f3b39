"""The PD disaggregation benchmark: 2 prefill + 2 decode engine-sims against 4 regular ones.

    cd /work/main   # the repository root; writes bench/results/<time>-pd/
    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python -m bench.pd'
    .venv/bin/python -m bench.pd --backends vllm --warmup 10 --window 30   # a quick look

Long prompts (~8k tokens, every one distinct, so no prefix cache hides a prefill), 256 output
tokens (`ignore_eos`), streaming chat completions arriving as a Poisson process (--rate, open
loop; --concurrency N runs bench.runner's closed loop instead). Each configuration gets a fresh
fleet of engine-sims and its own herdsman gateway (one gateway process, no warm spare), for each
engine protocol (--backends: vLLM's two-step handoff, SGLang's bootstrap rooms):

- ``regular``: 4 engines, ``--worker`` each, ``--policy least_load``;
- ``pd``: 2 ``--role prefill`` engines (``--prefill URL BOOTSTRAP_PORT``) and 2 ``--role decode``
  engines (``--decode URL``), ``--prefill-policy least_load --decode-policy least_load``.

Every sim has the same timing model (ENGINE_FLAGS), with ``--prefill-stalls-decode``: an engine
without chunked prefill, whose running sequences wait while it computes a prefill. That is the
interference PD removes: a decode engine never prefills, while a regular one stalls its batch for
each 8k-token prompt it takes.

Reported per configuration: TTFT and inter-token latency (gaps between streamed content chunks,
one token each) p50/p99/p99.9, each request's longest gap, output tokens/s, errors, and the
gateway's CPU per request (utime+stime of its process tree from /proc over the measured window,
divided by the requests completed in it; also net of the gateway's idle CPU, measured for --idle
seconds before the load), with the PD/regular ratio. The engines' own counters (--stats-file)
give requests per engine, decode steps held back by prefills, and KV handoffs; the gateway's log
is scanned for warnings and errors. A markdown table goes to stdout and report.md, JSON (and every
process's log) to the results directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procstat
from bench.load import HttpDriver
from bench.routing import Engine, cpu_model, wait_for_workers
from bench.routing_workload import UniqueShape, UniqueWorkload
from bench.runner import LoadConfig, Outcome, Window, percentiles, run_load
from bench.suite import Server, machine_busy, probe_chat
from bench.workload import Turn

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/qwen3"
TOKENIZER = ROOT / MODEL / "tokenizer.json"

# One engine, whatever its role: a large model's prefill rate (75 ms per 1k uncached tokens: an
# 8k-token prompt takes ~0.6 s), decode steps of 15 ms plus 0.25 ms per running sequence, and no
# chunked prefill (--prefill-stalls-decode: prefills run one at a time and, while one is being
# computed, the engine's running sequences get no tokens). A PD decode fetches the prompt's KV
# from its prefill's bootstrap server at 5 ms per 1k tokens (~40 ms for 8k: ~1 GB of an 8B
# model's bf16 KV at ~25 GB/s) before its first token. One token per stream message, so every
# inter-token gap is visible to the client.
ENGINE_FLAGS = [
    "--ttft-base-ms", "10", "--prefill-ms-per-1k", "75", "--prefill-stalls-decode",
    "--itl-base-ms", "15", "--itl-per-running-ms", "0.25", "--max-num-seqs", "64",
    "--kv-transfer-ms-per-1k", "5", "--tokens-per-message", "1",
]  # fmt: skip
PROMPT_TOKENS = 8000
# Open loop: Poisson arrivals, requests per second over the whole fleet (see the report).
RATE = 2.0
MAX_TOKENS = 256
CONFIGS = ("regular", "pd")


@dataclass(frozen=True)
class Config:
    name: str  # regular | pd
    backend: str  # vllm | sglang

    @property
    def label(self) -> str:
        return f"{self.name}-{self.backend}"

    def roles(self) -> list[str]:
        if self.name == "regular":
            return ["regular"] * 4
        return ["prefill", "prefill", "decode", "decode"]


# ---- the workload ----------------------------------------------------------------------------


class LongPrompts:
    """Single-turn chats of ~PROMPT_TOKENS tokens, every one distinct from its first cache block
    (bench.routing_workload's ``unique`` workload, resized), built before any load starts so the
    client does not tokenize 8k-token prompts while it times streams."""

    def __init__(self, seed: int, tokens: int, count: int) -> None:
        source = UniqueWorkload(TOKENIZER, seed, UniqueShape((tokens, tokens)))
        self.turns = [next(iter(source.conversation(k))) for k in range(count)]
        self.served = 0

    def conversation(self, k: int, *, with_ids: bool = False) -> list[Turn]:
        self.served = max(self.served, k + 1)
        return [self.turns[k % len(self.turns)]]

    def describe(self) -> dict[str, float]:
        sizes = sorted(t.prompt_tokens for t in self.turns)
        return {
            "count": len(sizes),
            "mean": round(sum(sizes) / len(sizes), 1),
            "min": sizes[0],
            "max": sizes[-1],
        }


# ---- the fleet -------------------------------------------------------------------------------


class Sim(Engine):
    """One engine-sim in a role; the routing benchmark's Engine reads its counters."""

    def __init__(
        self, index: int, role: str, backend: str, out: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.index = index
        self.role = role
        name = f"engine-{index}-{role}"
        self.stats_path = out / f"{name}.stats.json"
        self.stats_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "herdsman.sim", "--model-path", MODEL, "--backend", backend]
        argv += ["--port", "0", "--seed", "0", "--stats-file", str(self.stats_path)]
        argv += [*ENGINE_FLAGS, *extra, "--role", role, "--log-level", "WARNING"]
        if role == "prefill":
            argv += ["--bootstrap-port", "0"]
        self.server = Server(name, argv, out / f"{name}.log")
        self.port = 0
        self.bootstrap_port: int | None = None

    def wait_ready(self) -> None:
        line = re.compile(
            r"engine-sim listening on [\d.]+:(\d+) backend=\w+(?: bootstrap_port=(\d+))?"
        )
        match = self.server.wait_for_line(line)
        self.port = int(match.group(1))
        self.bootstrap_port = int(match.group(2)) if match.group(2) else None
        if self.role == "prefill" and self.bootstrap_port is None:
            raise RuntimeError(f"{self.server.name} stated no bootstrap port")


def start_fleet(config: Config, out: Path, extra: tuple[str, ...] = ()) -> list[Sim]:
    sims = [Sim(i, role, config.backend, out, extra) for i, role in enumerate(config.roles())]
    for sim in sims:  # started together, waited for in turn: their start-ups overlap
        sim.wait_ready()
    return sims


def stop_fleet(sims: list[Sim]) -> None:
    for sim in sims:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sim.server.pid, signal.SIGTERM)
    for sim in sims:
        sim.server.stop()


def gateway_argv(config: Config, sims: list[Sim], policy: str) -> list[str]:
    argv = [sys.executable, "-m", "herdsman", "serve", "--model-path", MODEL]
    argv += ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    argv += ["--workers", "1", "--no-warm-spare"]
    if config.name == "regular":
        argv += ["--policy", policy]
        for sim in sims:
            argv += ["--worker", sim.url]
        return argv
    argv += ["--prefill-policy", policy, "--decode-policy", policy]
    for sim in sims:
        if sim.role == "prefill":
            argv += ["--prefill", sim.url, str(sim.bootstrap_port)]
        else:
            argv += ["--decode", sim.url]
    return argv


def start_gateway(config: Config, sims: list[Sim], policy: str, log: Path) -> tuple[Server, str]:
    server = Server(f"gateway-{config.label}", gateway_argv(config, sims, policy), log)
    base = server.wait_for_line(re.compile(r"herdsman listening on (http://[\d.]+:\d+)"))[1]
    wait_for_workers(base, server, len(sims))
    probe_chat(base, server)
    return server, base


def log_findings(path: Path, limit: int = 8) -> dict[str, Any]:
    """Warnings and errors a process logged (the gateway runs at --log-level warning)."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    flagged = [s for s in lines if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", s)]
    return {"count": len(flagged), "samples": [s[:400] for s in flagged[:limit]]}


# ---- the open-loop client --------------------------------------------------------------------


def _quantiles(values: list[float]) -> dict[str, float | None]:
    """bench.runner's percentiles (ms), with p99.9."""
    stats = percentiles(values)
    if values:
        ordered = sorted(values)
        stats["p99.9"] = round(
            ordered[min(len(ordered) - 1, math.ceil(0.999 * len(ordered)) - 1)] * 1000, 3
        )
    return stats


async def open_loop(
    driver: HttpDriver,
    workload: LongPrompts,
    *,
    rate: float,
    warmup: float,
    window: float,
    timeout: float,
    seed: int,
    gateway_pid: int,
    on_window: Any,
) -> dict[str, Any]:
    """Poisson arrivals at `rate` requests/s, each on a keep-alive connection of its own while it
    runs (connections are reused by later requests). Requests count in the phase in which they
    complete; the gateway's and this client's CPU, and the machine's, are read at the window's
    edges."""
    rng = random.Random(f"pd-arrivals-{seed}")
    warm, measured = Window(MAX_TOKENS), Window(MAX_TOKENS)
    phase = {"current": warm}
    worst: list[float] = []  # per request measured: its longest inter-token gap
    free_slots: list[int] = []
    slots = 0
    in_flight: set[asyncio.Task[None]] = set()
    peak = 0
    sent = 0

    async def one(slot: int, turn: Turn) -> None:
        try:
            async with asyncio.timeout(timeout):
                outcome = await driver.request(slot, turn)
        except TimeoutError:
            outcome = Outcome().fail(f"timeout after {timeout:.0f}s")
        except Exception as exc:
            outcome = Outcome().fail(f"{type(exc).__name__}: {exc}")
        free_slots.append(slot)
        target = phase["current"]
        target.add(turn, outcome)
        if target is measured and outcome.ok and outcome.gaps:
            worst.append(max(outcome.gaps))

    async def arrivals(until: float) -> None:
        nonlocal slots, peak, sent
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if free_slots:
                slot = free_slots.pop()
            else:
                slot, slots = slots, slots + 1
            turn = workload.conversation(sent)[0]
            sent += 1
            task = asyncio.create_task(one(slot, turn))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            peak = max(peak, len(in_flight))
            next_at += rng.expovariate(rate)

    def snapshot() -> dict[str, float]:
        busy, total = procstat.machine_cpu()
        return {
            "at": time.perf_counter(),
            "gateway_ms": procstat.tree_cpu_ms(gateway_pid),
            "client_ms": time.process_time() * 1000.0,
            "busy": busy,
            "total": total,
        }

    loop = asyncio.get_running_loop()
    started = loop.time()
    source = asyncio.create_task(arrivals(started + warmup + window))
    try:
        await asyncio.sleep(warmup)
        await on_window("start")
        before = snapshot()
        phase["current"] = measured
        await asyncio.sleep(max(0.0, started + warmup + window - loop.time()))
        after = snapshot()
        await on_window("end")
        abandoned = len(in_flight)
    finally:
        source.cancel()
        for task in list(in_flight):
            task.cancel()
        await asyncio.gather(source, *in_flight, return_exceptions=True)
        await driver.close()
    elapsed = after["at"] - before["at"]
    done = measured.completed
    gateway_ms = after["gateway_ms"] - before["gateway_ms"]
    client_ms = after["client_ms"] - before["client_ms"]
    machine_total = after["total"] - before["total"]
    return {
        "label": "",
        "kind": "open-loop",
        "rate": rate,
        "sent": sent,
        "peak_in_flight": peak,
        "window_s": round(elapsed, 3),
        "completed": done,
        "errors": measured.errors,
        "error_samples": measured.error_samples,
        "req_per_s": round(done / elapsed, 3),
        "out_tok_per_s": round(measured.tokens / elapsed, 1),
        "ttft_ms": _quantiles(list(measured.ttfts)),
        "itl_ms": _quantiles(list(measured.gaps)),
        "worst_gap_ms": _quantiles(worst),
        "tokens_per_request": round(measured.tokens / done, 2) if done else None,
        "prompt_tokens": {
            "mean": round(sum(measured.prompt_tokens) / done, 1) if done else None,
            "server_mismatches": measured.prompt_mismatches,
        },
        "abandoned_in_flight": abandoned,
        "warmup": {
            "completed": warm.completed,
            "errors": warm.errors,
            "error_samples": warm.error_samples,
        },
        "gateway": {
            "pid": gateway_pid,
            "cpu_ms": round(gateway_ms, 1),
            "cpu_ms_per_req": round(gateway_ms / done, 3) if done else None,
            "cpu_cores": round(gateway_ms / 1000 / elapsed, 3),
        },
        "client": {"cpu_cores": round(client_ms / 1000 / elapsed, 3)},
        "machine": {
            "cpus": os.cpu_count(),
            "busy": round((after["busy"] - before["busy"]) / machine_total, 3)
            if machine_total
            else None,
        },
    }


# ---- one measurement -------------------------------------------------------------------------


def engine_window(sims: list[Sim], start: list[dict], end: list[dict], seconds: float) -> dict:
    """Per engine, what its own counters say happened in the measured window."""
    engines = []
    for sim, before, after in zip(sims, start, end, strict=True):
        b, a = before["ranks"][0], after["ranks"][0]
        row: dict[str, Any] = {"role": sim.role, "url": sim.url}
        for key in ("requests", "generated_tokens", "decode_steps", "decode_stalls"):
            row[key] = a[key] - b[key]
        row["decode_stall_ms"] = round(a["decode_stall_ms"] - b["decode_stall_ms"], 1)
        row["cpu_ms"] = round(after["cpu_ms"] - before["cpu_ms"], 1)
        for key in ("sent", "received", "timed_out", "expired", "failed"):
            row[f"kv_{key}"] = after["kv_handoffs"][key] - before["kv_handoffs"][key]
        engines.append(row)
    cpu_ms = sum(e["cpu_ms"] for e in engines)
    return {
        "engines": engines,
        "cpu_cores": round(cpu_ms / 1000.0 / seconds, 3) if seconds else None,
        "decode_stalls": sum(e["decode_stalls"] for e in engines),
        "decode_stall_ms": round(sum(e["decode_stall_ms"] for e in engines), 1),
        "kv_failures": sum(e["kv_timed_out"] + e["kv_failed"] + e["kv_expired"] for e in engines),
    }


def measure(
    config: Config, args: argparse.Namespace, workload: LongPrompts, out: Path, round_: int
) -> dict[str, Any]:
    logs = out / "logs" / f"r{round_}-{config.label}"
    logs.mkdir(parents=True, exist_ok=True)
    sims = start_fleet(config, logs, tuple(args.sim_flags.split()))
    gateway: Server | None = None
    edges: dict[str, list[dict[str, Any]]] = {}
    try:
        gateway, base = start_gateway(config, sims, args.policy, logs / "gateway.log")
        # What the gateway costs with no requests (health checks, load reports, KV-event
        # streams), to set beside its cost under load.
        idle_from = procstat.tree_cpu_ms(gateway.pid)
        time.sleep(args.idle)
        idle_cores = (procstat.tree_cpu_ms(gateway.pid) - idle_from) / 1000.0 / args.idle
        load = LoadConfig(
            label=config.label, concurrency=args.concurrency, duration=args.window,
            max_requests=1_000_000, warmup=args.warmup, warmup_requests=1_000_000,
            request_timeout=args.request_timeout, max_tokens=MAX_TOKENS, seed=args.seed,
            conversation_offset=0, gateway_pid=gateway.pid, engine_pid=None,
            rss_interval=0.0, tokenizer=str(TOKENIZER),
        )  # fmt: skip

        async def on_window(edge: str) -> None:
            edges[edge] = list(await asyncio.gather(*(s.counters() for s in sims)))
            if edge == "start" and args.profile and gateway is not None:
                # The serving process: the supervisor's child that is not a helper.
                children = [p.pid for p in procstat.tree(gateway.pid)[1:]]
                for pid in children:
                    subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                         "-d", str(int(args.profile)), "-f", "raw", "-o",
                         str(logs / f"py-spy-{pid}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip

        async def go() -> dict[str, Any]:
            client = HttpDriver(base, "qwen3", MAX_TOKENS, {"separate_reasoning": False})
            if args.concurrency:
                return await run_load(load, client, workload, on_window)  # type: ignore[arg-type]
            assert gateway is not None
            return await open_loop(
                client, workload, rate=args.rate, warmup=args.warmup, window=args.window,
                timeout=args.request_timeout, seed=args.seed, gateway_pid=gateway.pid,
                on_window=on_window,
            )  # fmt: skip

        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(go())
        # Requests cut off at the window's end are aborted at their engines: let that finish
        # before the gateway is stopped.
        time.sleep(2.0)
    finally:
        stops = {"gateway": gateway.stop() if gateway is not None else None}
        stop_fleet(sims)
    gw = result["gateway"]
    gw["idle_cores"] = round(idle_cores, 4)
    if result["completed"]:
        net = gw["cpu_ms"] - idle_cores * 1000.0 * result["window_s"]
        gw["cpu_ms_per_req_net_of_idle"] = round(net / result["completed"], 3)
    result.update(
        label=config.label,
        config=config.name,
        backend=config.backend,
        round=round_,
        engines=engine_window(sims, edges["start"], edges["end"], result["window_s"]),
        gateway_log=log_findings(logs / "gateway.log"),
        sim_logs={s.server.name: log_findings(s.server.log_path) for s in sims},
        gateway_argv=gateway.argv if gateway is not None else None,
        engine_flags=ENGINE_FLAGS,
        stop=stops,
    )
    (out / f"r{round_}-{config.label}.json").write_text(json.dumps(result, default=str) + "\n")
    print(summary_line(result), file=sys.stderr, flush=True)
    return result


# ---- the report ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"pd: round {r['round']} {r['config']}-{r['backend']}: {r['completed']} req, "
        f"errors {r['errors']}, TTFT p50/p99 {_ms(r['ttft_ms']['p50'])}/"
        f"{_ms(r['ttft_ms']['p99'])} ms, ITL p50/p99 {_ms(r['itl_ms']['p50'])}/"
        f"{_ms(r['itl_ms']['p99'])} ms, {r['out_tok_per_s']:.0f} tok/s, gateway "
        f"{r['gateway']['cpu_ms_per_req'] or 0:.2f} CPU ms/req, machine busy "
        f"{r['machine']['busy']:.0%}, gateway log {r['gateway_log']['count']} warnings/errors"
    )


def table(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| run | config | backend | requests | errors | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | "
        "ITL p99 ms | ITL p99.9 ms | worst gap per request p50/p99 ms | output tok/s | "
        "gateway CPU ms/req | same, net of idle | CPU cores: gateway, sims, client; machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e, gw = r["engines"], r["gateway"]
        worst = r.get("worst_gap_ms") or {}
        rows.append(
            f"| {r['round']} | {r['config']} | {r['backend']} | {r['completed']} | {r['errors']} | "
            f"{_ms(r['ttft_ms']['p50'])} | {_ms(r['ttft_ms']['p99'])} | "
            f"{_ms(r['itl_ms']['p50'])} | {_ms(r['itl_ms']['p99'])} | "
            f"{_ms(r['itl_ms'].get('p99.9'))} | "
            f"{_ms(worst.get('p50'))}/{_ms(worst.get('p99'))} | "
            f"{r['out_tok_per_s']:,.0f} | {gw['cpu_ms_per_req'] or 0:.2f} | "
            f"{gw.get('cpu_ms_per_req_net_of_idle') or 0:.2f} | "
            f"{gw['cpu_cores'] or 0:.2f}, {e['cpu_cores'] or 0:.2f}, "
            f"{r['client']['cpu_cores']:.2f}; {r['machine']['busy']:.0%} |"
        )
    return rows


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Gateway CPU per request, PD over regular, per run and backend (target: <= 1.5)."""
    rows = [
        "| run | backend | regular ms/req | pd ms/req | pd / regular | net of idle: regular, pd, "
        "ratio | ≤ 1.5× |",
        "|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["round"], r["backend"], r["config"]): r for r in results}
    for (round_, backend, name), r in sorted(keyed.items()):
        if name != "pd" or (round_, backend, "regular") not in keyed:
            continue
        base = keyed[(round_, backend, "regular")]["gateway"]
        gw = r["gateway"]
        regular, pd = base["cpu_ms_per_req"], gw["cpu_ms_per_req"]
        ratio = pd / regular if pd and regular else math.nan
        net_r = base.get("cpu_ms_per_req_net_of_idle") or math.nan
        net_p = gw.get("cpu_ms_per_req_net_of_idle") or math.nan
        met = "n/a" if math.isnan(ratio) else "yes" if ratio <= 1.5 else "**no**"
        rows.append(
            f"| {round_} | {backend} | {regular:.2f} | {pd:.2f} | {ratio:.2f}× | "
            f"{net_r:.2f}, {net_p:.2f}, {net_p / net_r:.2f}× | {met} |"
        )
    return rows


def engines_table(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| run | config | backend | requests per engine (role) | held decode steps per engine "
        "(total s) | "
        "KV handoffs sent/received, failed | gateway log warnings/errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        engines = r["engines"]["engines"]
        per = " ".join(f"{e['requests']} ({e['role'][0]})" for e in engines)
        held = " ".join(str(e["decode_stalls"]) for e in engines)
        held += f" ({r['engines']['decode_stall_ms'] / 1000:,.1f})"
        sent = sum(e["kv_sent"] for e in engines)
        received = sum(e["kv_received"] for e in engines)
        rows.append(
            f"| {r['round']} | {r['config']} | {r['backend']} | {per} | {held} | "
            f"{sent}/{received}, {r['engines']['kv_failures']} | {r['gateway_log']['count']} |"
        )
    return rows


# ---- main ------------------------------------------------------------------------------------


def herdsman_version() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + (
        " + uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backends", default="vllm,sglang", help="engine protocols, comma-separated (vllm, sglang)"
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="regular, pd (comma-separated)"
    )
    parser.add_argument(
        "--rate", type=float, default=RATE, help="Poisson arrivals per second (open loop)"
    )
    parser.add_argument(
        "--concurrency", "-c", type=int, default=0,
        help="a closed loop of this many clients instead of --rate (bench.runner)",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds of idle gateway CPU measured first"
    )
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=90.0, help="measured seconds")
    parser.add_argument("--rounds", type=int, default=1, help="every configuration this many times")
    parser.add_argument(
        "--policy", default="least_load", help="regular --policy; PD prefill and decode policy"
    )
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--sim-flags", default="", help="extra flags for every engine-sim")
    parser.add_argument(
        "--profile", type=float, default=0.0, help="py-spy the gateway this many seconds"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument(
        "--out", default=None, help="results directory (default: bench/results/<time>-pd)"
    )
    args = parser.parse_args(argv)

    backends = [b for b in args.backends.split(",") if b]
    names = [c for c in args.configs.split(",") if c]
    if not set(backends) <= {"vllm", "sglang"} or not set(names) <= set(CONFIGS):
        parser.error("unknown backend or configuration")
    started = datetime.now(UTC)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-pd"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    Server.registry = out / "server-pids"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # Every request reads a prompt of its own: enough for the fastest possible run (each request
    # holds its client at least MAX_TOKENS decode steps of --itl-base-ms).
    seconds = args.warmup + args.window
    if args.concurrency:
        count = int(args.concurrency * (seconds / (MAX_TOKENS * 0.015) + 2)) + 64
    else:  # the Poisson count's mean plus a margin far beyond its spread
        count = int(args.rate * seconds * 1.2) + 64
    built = time.monotonic()
    workload = LongPrompts(args.seed, args.prompt_tokens, count)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv,
        "herdsman": herdsman_version(),
        "python": sys.version.split()[0],
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model()},
        "busy_before": round(machine_busy(2.0), 3),
        "engine_flags": ENGINE_FLAGS,
        "prompts": workload.describe(),
        "max_tokens": MAX_TOKENS,
        "load": f"closed loop, {args.concurrency} clients"
        if args.concurrency
        else f"Poisson arrivals, {args.rate:g} requests/s",
        "warmup_s": args.warmup,
        "window_s": args.window,
        "policy": args.policy,
        "out": str(out),
    }
    print(
        f"pd: {len(workload.turns)} prompts built in {time.monotonic() - built:.1f}s "
        f"({meta['prompts']}); machine busy {meta['busy_before']:.0%} -> {out}",
        file=sys.stderr,
        flush=True,
    )
    results: list[dict[str, Any]] = []
    try:
        for round_ in range(1, args.rounds + 1):
            for backend in backends:
                for name in names:
                    results.append(measure(Config(name, backend), args, workload, out, round_))
    finally:
        Server.stop_all()
        meta["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
        meta["prompts_used"] = workload.served
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        (out / "results.json").write_text(json.dumps(results, default=str, indent=1) + "\n")
    if workload.served > len(workload.turns):
        print("pd: WARNING: prompts were reused (raise the prompt count)", file=sys.stderr)
    report = [
        f"PD benchmark, {meta['started']}, herdsman {meta['herdsman']}, "
        f"{meta['machine']['nproc']} CPUs, {meta['load']}, warm-up {args.warmup:.0f} s + "
        f"window {args.window:.0f} s per configuration; prompts "
        f"{meta['prompts']['mean']:.0f} tokens (min {meta['prompts']['min']}, max "
        f"{meta['prompts']['max']}), {MAX_TOKENS} output tokens",
        "",
        *table(results),
        "",
        *ratios(results),
        "",
        *engines_table(results),
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0 if results and all(r["completed"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
