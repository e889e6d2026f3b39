"""The routing benchmark: fleets of engine-sims behind herdsman (each policy) and SMG 1.13.

    ./bench/routing.sh            # full run (~50 min); writes docs/benchmarks-routing.md
    ./bench/routing.sh --quick    # a smoke run of every measurement with short windows
    ./bench/routing.sh --fleets 8 --workloads shared --targets round_robin,cache_aware

For each fleet size (4 and 8 engine-sims) and workload (``shared``: many tenants with long
system prompts, multi-turn conversations; ``unique``: no two prompts share a block; see
bench/routing_workload.py), every target gets a fresh fleet (empty prefix caches), its gateway,
and the same sequence of conversations from a closed loop of clients: warm-up, then a measured
window. At the window's edges every engine writes its counters (``--stats-file``, on SIGUSR1):
requests it received, prompt tokens it looked up and how many its prefix cache served. So the
hit rate and the requests per engine are the engines' own account of the window, whatever the
gateway believes.

Targets: herdsman with each policy (``consistent_hash`` keyed per conversation by
``X-Routing-Key``), and SMG with ``--policy cache_aware`` in its two modes (KV events: the sims
publish them and SMG subscribes; approximate: the sims run ``--no-kv-events``, so SMG falls back to
its tree of the prompts it routed) and ``--policy round_robin``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procstat
from bench.load import HttpDriver, Outcome
from bench.routing_workload import WORKLOADS, Workloads, describe, make_workload
from bench.runner import LoadConfig, run_load
from bench.suite import Server, free_port, http_json, machine_busy, probe_chat, wait_for_models
from bench.workload import Turn

ROOT = Path(__file__).resolve().parent.parent
MODEL = "models/qwen3"
TOKENIZER = ROOT / MODEL / "tokenizer.json"
DOCS = ROOT / "docs" / "benchmarks-routing.md"
KEEP_SECTION = "## Routing decision cost"

# One engine of the fleet. Prefill is serial and costs 150 ms per 1k uncached tokens (a large
# model's prefill rate), so a cache miss delays every request queued behind it on that engine;
# decoding 8 sequences at ~38 ms a step, 64 output tokens, makes a request hold a slot ~2.5 s.
# The prefix cache holds 4096 blocks of 16 tokens (65k tokens): a quarter or less of the tenants'
# system prompts and live conversations together (see the report's workload table), so where
# requests go decides what stays cached. Four tokens per stream message keep the sims' CPU, which
# the gateway and the client share on two cores, about a quarter of what one per token costs.
MAX_NUM_SEQS = 8
ENGINE_FLAGS = [
    "--ttft-base-ms", "10", "--prefill-ms-per-1k", "150", "--serial-prefill",
    "--itl-base-ms", "30", "--itl-per-running-ms", "1",
    "--max-num-seqs", str(MAX_NUM_SEQS), "--cache-blocks", "4096", "--block-size", "16",
    "--tokens-per-message", "4",
]  # fmt: skip
MAX_TOKENS = 64
# Closed loop: 10 clients per engine against its 8 slots. A fleet balanced perfectly has every
# slot busy and about 2 requests queued per engine (saturated, with a bounded queue); a policy
# that piles requests on some engines leaves slots idle elsewhere and queues there instead.
CLIENTS_PER_ENGINE = 10

HERDSMAN_POLICIES = (
    "round_robin", "random", "power_of_two", "least_load", "prefix_hash", "consistent_hash",
    "cache_aware",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # herdsman | smg
    policy: str
    # Whether the sims publish KV events (SMG's approximate mode needs engines without them).
    kv_events: bool = True
    # Send X-Routing-Key: the conversation (consistent_hash).
    routing_key: bool = False
    flags: tuple[str, ...] = ()


def all_targets() -> list[Target]:
    targets = [
        Target(p, "herdsman", p, routing_key=p == "consistent_hash") for p in HERDSMAN_POLICIES
    ]
    targets += [
        Target("smg cache_aware (KV events)", "smg", "cache_aware"),
        Target("smg cache_aware (approximate)", "smg", "cache_aware", kv_events=False),
        Target("smg round_robin", "smg", "round_robin"),
    ]
    return targets


def target_slug(target: Target) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{target.kind}-{target.name}".lower()).strip("-")


@dataclass
class Timing:
    warmup: float
    window: float


MODES = {
    # Warm-up long enough for the caches to fill and conversations to reach later turns.
    "full": {"shared": Timing(25.0, 45.0), "unique": Timing(10.0, 30.0)},
    "quick": {"shared": Timing(5.0, 8.0), "unique": Timing(3.0, 6.0)},
}


# ---- the fleet -------------------------------------------------------------------------------


class Engine:
    def __init__(self, index: int, out: Path, kv_events: bool) -> None:
        self.index = index
        self.stats_path = out / f"engine-{index}.stats.json"
        self.stats_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "herdsman.sim", "--model-path", MODEL, "--backend", "vllm"]
        argv += ["--port", "0", "--seed", str(index), "--stats-file", str(self.stats_path)]
        argv += [*ENGINE_FLAGS, "--log-level", "WARNING"]
        if not kv_events:
            argv.append("--no-kv-events")
        self.server = Server(f"engine-{index}", argv, out / f"engine-{index}.log")
        self.port = 0

    def wait_ready(self) -> None:
        match = self.server.wait_for_line(re.compile(r"engine-sim listening on [\d.]+:(\d+)"))
        self.port = int(match.group(1))

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def _sequence(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(self.stats_path.read_text())["sequence"])
        return 0

    async def counters(self, timeout: float = 10.0) -> dict[str, Any]:
        """A fresh snapshot of the engine's counters (SIGUSR1, then wait for the rewrite)."""
        seen = self._sequence()
        os.kill(self.server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            with contextlib.suppress(OSError, ValueError):
                stats = json.loads(self.stats_path.read_text())
                if stats["sequence"] > seen:
                    stat = procstat.read_stat(self.server.pid)
                    ticks = stat.own_ticks if stat else 0
                    stats["cpu_ms"] = ticks * 1000.0 / procstat.CLOCK_TICKS
                    return dict(stats)
        raise RuntimeError(f"engine {self.index} wrote no stats within {timeout}s")


class Fleet:
    def __init__(self, size: int, out: Path, kv_events: bool) -> None:
        # Started together, then waited for: their start-up overlaps.
        self.engines = [Engine(i, out, kv_events) for i in range(size)]
        for engine in self.engines:
            engine.wait_ready()

    async def counters(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(e.counters() for e in self.engines)))

    def stop(self) -> None:
        # All at once: each takes up to a second to close its gRPC server.
        for engine in self.engines:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.server.pid, signal.SIGTERM)
        for engine in self.engines:
            engine.server.stop()


def window_delta(start: list[dict[str, Any]], end: list[dict[str, Any]]) -> dict[str, Any]:
    """Per engine, what happened between two counter snapshots (rank 0: the sims run one)."""
    engines = []
    for before, after in zip(start, end, strict=True):
        b, a = before["ranks"][0], after["ranks"][0]
        engines.append(
            {
                key: a[key] - b[key]
                for key in ("requests", "prompt_tokens", "cached_tokens", "generated_tokens")
            }
            | {
                "cache_blocks": a["cache_blocks"],
                "cpu_ms": after.get("cpu_ms", 0.0) - before.get("cpu_ms", 0.0),
                "kv_subscribers": after["kv_subscribers"],
            }
        )
    return summarize_engines(engines)


def summarize_engines(engines: list[dict[str, Any]]) -> dict[str, Any]:
    requests = [e["requests"] for e in engines]
    prompt = sum(e["prompt_tokens"] for e in engines)
    cached = sum(e["cached_tokens"] for e in engines)
    low = min(requests, default=0)
    return {
        "engines": engines,
        "requests": requests,
        "hit_rate": cached / prompt if prompt else math.nan,
        "max_min": max(requests) / low if low else math.inf,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
    }


# ---- gateways --------------------------------------------------------------------------------


def healthy_workers(payload: Any) -> int:
    """Healthy workers in a GET /workers answer (herdsman's `healthy`, SMG's `is_healthy`)."""
    workers = payload.get("workers", []) if isinstance(payload, dict) else []
    return sum(1 for w in workers if w.get("healthy", w.get("is_healthy")) is True)


def wait_for_workers(base: str, server: Server, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, urllib.error.HTTPError):
            seen = healthy_workers(http_json(f"{base}/workers", timeout=5.0))
            if seen >= count:
                return
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        time.sleep(0.2)
    raise RuntimeError(f"{server.name}: {seen} of {count} workers healthy after {timeout:.0f}s")


def gateway_argv(target: Target, urls: list[str], smg: str, processes: int) -> list[str]:
    if target.kind == "herdsman":
        argv = [sys.executable, "-m", "herdsman", "serve", "--model-path", MODEL]
        argv += ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
        argv += ["--workers", str(processes), "--policy", target.policy]
        for url in urls:
            argv += ["--worker", url]
        return [*argv, *target.flags]
    argv = [smg, "launch", "--worker-urls", *urls, "--model-path", MODEL]
    argv += ["--policy", target.policy, "--host", "127.0.0.1", "--log-level", "warn"]
    return [*argv, *target.flags]


def start_gateway(
    target: Target, urls: list[str], smg: str, processes: int, log: Path
) -> tuple[Server, str]:
    argv = gateway_argv(target, urls, smg, processes)
    if target.kind == "herdsman":
        server = Server(target.name, argv, log)
        base = server.wait_for_line(re.compile(r"herdsman listening on (http://[\d.]+:\d+)"))[1]
    else:
        port = free_port()
        argv += ["--port", str(port)]
        # SMG would otherwise try the Hugging Face hub; a closed local port fails fast.
        server = Server(target.name, argv, log, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
        base = f"http://127.0.0.1:{port}"
        wait_for_models(base, server)
    wait_for_workers(base, server, len(urls))
    probe_chat(base, server)
    return server, base


# ---- the client ------------------------------------------------------------------------------


class RoutingClient(HttpDriver):
    """bench.load's streaming client, with the conversation as X-Routing-Key when asked."""

    def __init__(self, url: str, routing_key: bool) -> None:
        super().__init__(url, "qwen3", MAX_TOKENS, {"separate_reasoning": False})
        self.routing_key = routing_key
        # The shared head ends with "Content-Length: "; the key goes before it.
        self._head_keyed = self._head.replace(b"Content-Length: ", b"X-Routing-Key: conv-%d\r\n")

    async def request(self, slot: int, turn: Turn) -> Outcome:
        if not self.routing_key:
            return await super().request(slot, turn)
        body = self.body(turn)
        conn = self._conns.get(slot) or await self._connect(slot)
        reader, writer = conn
        keep = False
        try:
            started = time.perf_counter()
            head = self._head_keyed % turn.conversation + b"Content-Length: %d\r\n\r\n" % len(body)
            writer.write(head + body)
            outcome, keep = await self._response(reader, started)
            return outcome
        finally:
            if not keep:
                self._drop(slot)


def measure(
    fleet_size: int,
    workload: Workloads,
    target: Target,
    timing: Timing,
    args: argparse.Namespace,
    out: Path,
    offset: int,
) -> dict[str, Any]:
    stem = f"n{fleet_size}-{workload.name}-{target_slug(target)}"
    logs = out / "logs" / stem
    logs.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(fleet_size, logs, target.kv_events)
    gateway: Server | None = None
    edges: dict[str, list[dict[str, Any]]] = {}
    try:
        urls = [e.url for e in fleet.engines]
        gateway, base = start_gateway(target, urls, args.smg, args.processes, logs / "gateway.log")
        concurrency = CLIENTS_PER_ENGINE * fleet_size
        config = LoadConfig(
            label=target.name, concurrency=concurrency, duration=timing.window,
            max_requests=1_000_000, warmup=timing.warmup, warmup_requests=1_000_000,
            request_timeout=args.request_timeout, max_tokens=MAX_TOKENS, seed=args.seed,
            conversation_offset=offset, gateway_pid=gateway.pid, engine_pid=None,
            rss_interval=0.0, tokenizer=str(TOKENIZER),
        )  # fmt: skip

        async def on_window(edge: str) -> None:
            edges[edge] = await fleet.counters()

        async def go() -> dict[str, Any]:
            client = RoutingClient(base, target.routing_key)
            return await run_load(config, client, workload, on_window)  # type: ignore[arg-type]

        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(go())
    finally:
        stops = {"gateway": gateway.stop() if gateway is not None else None}
        fleet.stop()
    window = result["window_s"]
    engines = window_delta(edges["start"], edges["end"])
    engines["cpu_cores"] = round(sum(e["cpu_ms"] for e in engines["engines"]) / 1000 / window, 3)
    result.update(
        fleet=fleet_size,
        workload=workload.name,
        target=asdict(target),
        engines=engines,
        gateway_argv=gateway.argv if gateway is not None else None,
        engine_flags=ENGINE_FLAGS,
        stop=stops,
    )
    (out / f"{stem}.json").write_text(json.dumps(result, default=str) + "\n")
    print(line(result), file=sys.stderr, flush=True)
    return result


def line(result: dict[str, Any]) -> str:
    e = result["engines"]
    ttft = result["ttft_ms"]
    return (
        f"routing: n={result['fleet']} {result['workload']} {result['target']['name']}: "
        f"hit {e['hit_rate']:.1%}, TTFT p50/p99 {ttft['p50'] or 0:.0f}/{ttft['p99'] or 0:.0f} ms, "
        f"{result['out_tok_per_s']:.0f} tok/s, requests {e['requests']} "
        f"(max/min {e['max_min']:.2f}), errors {result['errors']}, "
        f"machine busy {result['machine']['busy']:.0%}"
    )


# ---- the report ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float) -> str:
    return "∞" if math.isinf(value) else "-" if math.isnan(value) else f"{value:.2f}"


def find(results: list[dict[str, Any]], fleet: int, workload: str, name: str) -> dict | None:
    for r in results:
        if r["fleet"] == fleet and r["workload"] == workload and r["target"]["name"] == name:
            return r
    return None


def table(results: list[dict[str, Any]], fleet: int, workload: str) -> list[str]:
    rows = [
        "| target | engine hit rate | TTFT p50 ms | TTFT p99 ms | output tok/s | req/s | "
        "requests per engine | max/min | errors | KV-event subscribers | CPU cores: sims, "
        "gateway |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["fleet"] != fleet or r["workload"] != workload:
            continue
        e = r["engines"]
        name = r["target"]["name"]
        name = f"herdsman {name}" if r["target"]["kind"] == "herdsman" else name
        # Per engine, at the window's end: a router reading KV events shows as 1 (or more).
        subscribers = sorted({str(x.get("kv_subscribers")) for x in e["engines"]})
        shown = "none (no KV events)" if subscribers == ["None"] else "/".join(subscribers)
        rows.append(
            f"| {name} | {e['hit_rate']:.1%} | {_ms(r['ttft_ms']['p50'])} | "
            f"{_ms(r['ttft_ms']['p99'])} | {r['out_tok_per_s']:,.0f} | {r['req_per_s']:.2f} | "
            f"{' '.join(str(n) for n in e['requests'])} | {_ratio(e['max_min'])} | "
            f"{r['errors']} | {shown} | {e['cpu_cores']:.2f}, "
            f"{r['gateway']['cpu_cores'] or 0:.2f} |"
        )
    return rows


def checks(results: list[dict[str, Any]], fleets: list[int]) -> list[str]:
    """The issue's targets, checked against this run's numbers."""
    rows = ["| target | measured | met |", "|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "**yes**" if ok else "**no**"

    top = max(fleets)
    ca = find(results, top, "shared", "cache_aware")
    rr = find(results, top, "shared", "round_robin")
    if ca and rr and ca["ttft_ms"]["p99"] and rr["ttft_ms"]["p99"]:
        gain = rr["ttft_ms"]["p99"] / ca["ttft_ms"]["p99"]
        rows.append(
            f"| shared, {top} engines: cache_aware TTFT p99 ≥ 2× lower than round_robin | "
            f"{rr['ttft_ms']['p99']:,.0f} → {ca['ttft_ms']['p99']:,.0f} ms ({gain:.2f}×) | "
            f"{verdict(gain >= 2)} |"
        )
        tput = ca["out_tok_per_s"] / rr["out_tok_per_s"] if rr["out_tok_per_s"] else math.nan
        rows.append(
            f"| shared, {top} engines: cache_aware output tok/s ≥ 1.5× round_robin | "
            f"{rr['out_tok_per_s']:,.0f} → {ca['out_tok_per_s']:,.0f} ({tput:.2f}×) | "
            f"{verdict(tput >= 1.5)} |"
        )
    else:
        rows.append("| cache_aware vs round_robin (shared) | not measured in this run | n/a |")
    for fleet in fleets:
        ca = find(results, fleet, "unique", "cache_aware")
        ll = find(results, fleet, "unique", "least_load")
        if ca and ll and ll["out_tok_per_s"]:
            delta = ca["out_tok_per_s"] / ll["out_tok_per_s"] - 1
            p99 = (ca["ttft_ms"]["p99"] or 0) / (ll["ttft_ms"]["p99"] or 1) - 1
            rows.append(
                f"| unique, {fleet} engines: cache_aware within 5% of least_load | "
                f"output tok/s {delta:+.1%}, TTFT p99 {p99:+.1%} | {verdict(delta >= -0.05)} |"
            )
    for fleet in fleets:
        for workload in WORKLOADS:
            ca = find(results, fleet, workload, "cache_aware")
            for mode in ("KV events", "approximate"):
                smg = find(results, fleet, workload, f"smg cache_aware ({mode})")
                if not (ca and smg):
                    continue
                hit = ca["engines"]["hit_rate"] >= smg["engines"]["hit_rate"] - 0.005
                ttft = all(
                    (ca["ttft_ms"][q] or math.inf) <= (smg["ttft_ms"][q] or math.inf) * 1.05
                    for q in ("p50", "p99")
                )
                rows.append(
                    f"| {workload}, {fleet} engines: cache_aware ≥ SMG cache_aware ({mode}) "
                    f"hit rate and TTFT | hit {ca['engines']['hit_rate']:.1%} vs "
                    f"{smg['engines']['hit_rate']:.1%}; TTFT p50 {_ms(ca['ttft_ms']['p50'])} vs "
                    f"{_ms(smg['ttft_ms']['p50'])}, p99 {_ms(ca['ttft_ms']['p99'])} vs "
                    f"{_ms(smg['ttft_ms']['p99'])} ms | {verdict(hit and ttft)} |"
                )
    hashing = {"prefix_hash", "consistent_hash"}
    over = []
    measured = 0
    for r in results:
        if r["target"]["kind"] != "herdsman" or r["target"]["name"] in hashing:
            continue
        measured += 1
        if r["engines"]["max_min"] > 1.5:
            over.append(
                f"{r['target']['name']} ({r['workload']}, {r['fleet']}: "
                f"{_ratio(r['engines']['max_min'])})"
            )
    if measured:
        rows.append(
            "| max/min requests per engine ≤ 1.5, every herdsman policy but the hashing ones | "
            + ("over: " + "; ".join(over) if over else f"all {measured} measurements")
            + f" | {verdict(not over)} |"
        )
    return rows


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    fleets = sorted({r["fleet"] for r in results})
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    shapes = meta["workloads"]
    lines = [
        "# Routing benchmark",
        "",
        f"Generated by `{meta['invocation']}` on {meta['started']} ({meta['mode']} mode, "
        f"{meta['elapsed_s'] / 60:.0f} minutes). herdsman {meta['versions']['herdsman']}, "
        f"SMG {meta['versions']['smg']}. Raw results: `{meta['out']}` under `bench/results/` "
        "(not committed).",
        "",
        f"Machine: {meta['machine']['nproc']} cores ({meta['machine']['cpu_model']}), shared by "
        "the client, every engine-sim and the gateway; busy "
        f"{meta['background_busy_before']:.0%} before the run started (anything above a few "
        "percent is other work on the machine, and the numbers are then noisier).",
        "",
        "## Setup",
        "",
        f"- **Fleets** of {' and '.join(map(str, fleets))} engine-sims (vLLM protocol, Qwen3 "
        f"tokenizer), each `{' '.join(ENGINE_FLAGS)}`: prefill is one queue per engine "
        "(`--serial-prefill`) at 150 ms per 1k tokens the prefix cache does not hold, so a miss "
        "delays every request behind it; at most 8 sequences decode at once (~38 ms a step), "
        "the rest wait; the LRU prefix cache holds 65,536 tokens (4096 blocks of 16).",
        f"- **Load**: a closed loop of {CLIENTS_PER_ENGINE} clients per engine "
        f"({', '.join(f'{CLIENTS_PER_ENGINE * n} for {n}' for n in fleets)} engines), each "
        f"walking its conversations turn by turn, streaming, `max_tokens` {MAX_TOKENS} "
        "(`ignore_eos`). Closed rather than open loop: with 10 clients for 8 slots a balanced "
        "fleet is saturated (every slot busy, ~2 requests queued per engine), while an open loop "
        "at a fixed rate would either leave the better policies idle or grow the worse ones' "
        "queues without bound for as long as the run lasts; here each policy runs at its own "
        "capacity, so output tok/s compares capacities and TTFT compares queueing at equal "
        "concurrency.",
        "- **Windows**: every target gets a fresh fleet (empty caches) and the same conversation "
        "sequence; warm-up then measurement: "
        + "; ".join(
            f"{w} {meta['timing'][w]['warmup']:.0f} s + {meta['timing'][w]['window']:.0f} s"
            for w in workloads
        )
        + ".",
        "- **Engine hit rate** and **requests per engine** are the engines' own counters "
        "(`engine-sim --stats-file`, read on SIGUSR1 at the window's edges): prompt tokens served "
        "from the prefix cache over prompt tokens looked up, and Generate calls received. TTFT, "
        "output tokens/s and errors are the client's.",
        f"- **herdsman**: `herdsman serve --workers {meta['processes']} --policy NAME` "
        "(`consistent_hash` gets `X-Routing-Key: conv-<conversation>`), defaults otherwise.",
        "- **SMG** 1.13 (`smg launch --worker-urls grpc://… --model-path models/qwen3 --policy "
        "NAME`, defaults otherwise): `cache_aware` in its **KV-event mode** (the sims publish KV "
        "events; SMG subscribes to each one's `SubscribeKvEvents` and scores workers by the "
        "blocks they hold) and its **approximate mode** (the sims run `--no-kv-events` and "
        "answer UNIMPLEMENTED, so SMG routes on its own tree of the prompts it sent), and "
        "`round_robin`. The KV-event subscribers column shows which mode each run was in.",
        "",
        f"Workloads (deterministic from seed {meta['seed']}, `bench/routing_workload.py`):",
        "",
    ]
    if "shared" in shapes:
        s = shapes["shared"]
        lines.append(
            f"- **shared**: {s['tenants']} tenants, system prompts of 2–6k tokens "
            f"({s['system_tokens_total']:,} tokens together), tenant popularity Zipf "
            f"{s['zipf']} (the busiest tenant has {s['top_tenant_share']:.0%} of the "
            f"conversations); {s['requests_per_conversation']:.1f} turns per conversation; prompts "
            f"{s['prompt_mean']:,.0f} tokens on average (p10 {s['prompt_p10']:,}, p90 "
            f"{s['prompt_p90']:,}). A cache that always held the tenant's system prompt and the "
            f"conversation's previous turn would serve {s['reusable_share']:.0%} of all prompt "
            "tokens; one engine's cache holds about half the system prompts alone, not "
            "conversations too."
        )
    if "unique" in shapes:
        u = shapes["unique"]
        lines.append(
            f"- **unique**: single-turn prompts of {u['prompt_mean']:,.0f} tokens on average "
            f"(p10 {u['prompt_p10']:,}, p90 {u['prompt_p90']:,}), each distinct from its first "
            "block: nothing to reuse, only balance matters."
        )
    lines += ["", "## Results", ""]
    for fleet in fleets:
        for workload in workloads:
            lines += [f"### {fleet} engines, {workload}", "", *table(results, fleet, workload), ""]
    for failure in meta.get("failed", []):
        first = failure["error"].strip().splitlines()[0] if failure["error"].strip() else "?"
        lines += [
            f"**Not measured**: {failure['target']} ({failure['fleet']} engines, "
            f"{failure['workload']}): `{first[:200]}`",
            "",
        ]
    lines += ["## The issue's targets", "", *checks(results, fleets), ""]
    lines += ANALYSIS.splitlines()
    lines += [
        "",
        "## Commands",
        "",
        "```sh",
        "./bench/routing.sh                # full run; rewrites docs/benchmarks-routing.md",
        "./bench/routing.sh --quick        # short windows, same plan",
        "./bench/routing.sh --fleets 8 --workloads shared --targets round_robin,cache_aware",
        "```",
        "",
    ]
    return "\n".join(lines)


ANALYSIS = """## Reading the numbers

- **What routing changes here** is which engine's prefix cache a request finds. A shared-prefix
  request that lands where its tenant's system prompt and its conversation's previous turn are
  cached prefills only the new turn (a few hundred tokens); elsewhere it prefills up to the whole
  prompt (~4.5k tokens, ~0.7 s of the engine's one prefill queue), and every request queued behind
  it on that engine waits too. Round robin and random scatter a conversation's turns over the
  fleet, so each engine sees every tenant and its cache churns; hashing by tenant prefix
  (`prefix_hash`) or by conversation (`consistent_hash`) keeps affinity but cannot move load away
  from a busy key; load-based policies balance but ignore the caches.
- **Hit rate vs TTFT**: the engine hit rate is the cause, TTFT and output tokens/s the effect;
  with these timings a few points of hit rate move TTFT p99 by whole seconds, because misses
  queue on one prefill resource per engine.
- **Balance**: max/min is over the engines' received requests in the window. The shared
  workload's busiest tenant has more conversations than one engine of eight can serve, so a
  policy keyed on the tenant's prefix (`prefix_hash`, and SMG's cache_aware, whose affinity wins
  until an engine exceeds the fleet mean by 64 requests) piles onto its engine; herdsman's
  `cache_aware` keeps an engine's load within 4 requests or 1.25× of the least loaded, so the hot
  tenant spills onto other engines (which then cache its system prompt too).
- **What the machine can and cannot show**: the engines are simulated (timings as in the flags
  above, not a GPU), on 2 cores that the sims, the gateway and the client share. Engine time is
  simulated sleep, so it does not compete for the CPU; CPU contention shows up as added latency
  in the gateway and the client's own measurements (the sims CPU and gateway CPU above say how
  loaded the machine was). Absolute TTFTs and throughputs are those of this simulated fleet; the
  ratios between policies are the result. A run shares the machine with nothing else only if the
  busy figure before it was near 0%.
- **Windows are short** (tens of seconds, a few hundred to a few thousand requests per target),
  so p99 rests on a handful of requests: differences under ~20% at p99 are within run-to-run
  noise. Requests are attributed to the window when they complete (client) and when they arrive
  (engines), so both sides can differ by the requests in flight at the edges.
"""


def keep_section(path: Path) -> str:
    """The section another benchmark writes into the same page (kept as it is)."""
    if not path.exists():
        return ""
    text = path.read_text()
    start = text.find(KEEP_SECTION)
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(KEEP_SECTION))
    return text[start:] if end < 0 else text[start : end + 1]


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    kept = keep_section(path)
    report = render(results, meta)
    if kept:
        report = report.rstrip("\n") + "\n\n" + kept.rstrip("\n") + "\n"
    path.write_text(report)


# ---- main ------------------------------------------------------------------------------------


def versions(smg: str) -> dict[str, str]:
    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    rev = run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if run(["git", "status", "--porcelain", "--", "src"]):
        rev += " + uncommitted changes in src/"
    smg_version = "not installed"
    with contextlib.suppress(OSError):
        smg_version = (
            run(
                [
                    str(Path(smg).parent / "python"),
                    "-c",
                    "import importlib.metadata as m; print(m.version('smg'))",
                ]
            )
            or smg_version
        )
    return {"herdsman": rev, "smg": smg_version}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run)")
    parser.add_argument("--fleets", default="4,8", help="engines per fleet, comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument(
        "--smg", default=str(Path.home() / ".cache/herdsman-bench/smg-venv/bin/smg")
    )
    parser.add_argument("--processes", type=int, default=1, help="herdsman gateway processes")
    parser.add_argument(
        "--herdsman-flags", default="", help="extra flags for every herdsman gateway (tuning)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--docs", default=str(DOCS))
    parser.add_argument("--invocation", default="./bench/routing.sh")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    fleets = [int(n) for n in args.fleets.split(",") if n]
    workload_names = [w for w in args.workloads.split(",") if w]
    only = {t.strip() for t in args.targets.split(",") if t.strip()}
    targets = [t for t in all_targets() if not only or t.name in only or t.kind in only]
    extra = tuple(args.herdsman_flags.split())
    if extra:
        targets = [
            dataclasses.replace(t, flags=(*t.flags, *extra)) if t.kind == "herdsman" else t
            for t in targets
        ]
    if not targets:
        parser.error(f"no target matches {args.targets!r}")
    if any(t.kind == "smg" for t in targets) and not Path(args.smg).exists():
        parser.error(f"SMG not found at {args.smg} (./bench/routing.sh installs it)")

    started = datetime.now(UTC)
    out = ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-routing-{mode}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    Server.registry = out / "server-pids"
    # SIGTERM (routing.sh's trap) unwinds through the finally blocks, which stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workloads = {name: make_workload(name, TOKENIZER, args.seed) for name in workload_names}
    shapes: dict[str, Any] = {}
    for name, workload in workloads.items():
        shapes[name] = describe(workload)
        if name == "shared":
            shapes[name].update(
                tenants=workload.shape.tenants,  # type: ignore[union-attr]
                zipf=workload.shape.zipf,  # type: ignore[union-attr]
            )
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "mode": mode,
        "invocation": args.invocation,
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model()},
        "versions": versions(args.smg),
        "background_busy_before": round(machine_busy(2.0), 3),
        "processes": args.processes,
        "seed": args.seed,
        "timing": {w: asdict(t) for w, t in MODES[mode].items()},
        "workloads": shapes,
        "out": out.name,
        "engine_flags": ENGINE_FLAGS,
        "failed": [],
    }
    print(
        f"routing: {mode} run, fleets {fleets}, workloads {workload_names}, "
        f"{len(targets)} targets; machine busy {meta['background_busy_before']:.0%} -> {out}",
        file=sys.stderr,
        flush=True,
    )
    results: list[dict[str, Any]] = []
    try:
        for fleet_index, fleet in enumerate(fleets):
            for workload_index, name in enumerate(workload_names):
                # The same conversations for every target of a (fleet, workload).
                offset = (fleet_index * len(WORKLOADS) + workload_index) * 1_000_000
                for target in targets:
                    try:
                        results.append(
                            measure(
                                fleet, workloads[name], target, MODES[mode][name], args, out,
                                offset,
                            )
                        )  # fmt: skip
                    except RuntimeError as exc:
                        # One target failing to start must not lose the others' numbers.
                        print(f"routing: {target.name} failed: {exc}", file=sys.stderr)
                        meta["failed"].append(
                            {"fleet": fleet, "workload": name, "target": target.name,
                             "error": str(exc)[:2000]}
                        )  # fmt: skip
    finally:
        Server.stop_all()
        meta["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if not results:
        return 1
    write_report(results, meta, Path(args.docs))
    write_report(results, meta, out / "benchmarks-routing.md")
    print(f"routing: wrote {args.docs} ({meta['elapsed_s'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
