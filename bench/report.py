"""Turns one suite run (bench/results/<run>/) into docs/benchmarks.md.

python -m bench.report bench/results/<run> [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLIENT_CORES_WARN = 0.5
MACHINE_BUSY_WARN = 0.95
BACKGROUND_WARN = 0.10
OTHER_CORES_WARN = 0.25
# A gateway within this fraction of the floor's req/s is not what limits throughput.
FLOOR_MATCH = 0.95


def load(out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta = json.loads((out_dir / "meta.json").read_text())
    results = [
        json.loads(path.read_text())
        for path in sorted(out_dir.glob("*.json"))
        if path.name != "meta.json"
    ]
    order = {t["name"]: i for i, t in enumerate(meta["targets"])}
    scenarios = {s["name"]: i for i, s in enumerate(meta["scenarios"])}
    results = [r for r in results if "scenario" in r]
    results.sort(
        key=lambda r: (scenarios.get(r["scenario"], 99), r["concurrency"], order.get(r["target"]))
    )
    return meta, results


def load_aiperf(out_dir: Path) -> list[dict[str, Any]]:
    """aiperf's measurements (bench/aiperf_client.py), kept apart under aiperf/."""
    return [json.loads(path.read_text()) for path in sorted((out_dir / "aiperf").glob("*.json"))]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def rss_mb(snapshot: dict[str, Any] | None) -> float | None:
    return snapshot["total_kb"] / 1024 if snapshot else None


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def find(
    results: list[dict[str, Any]], scenario: str, c: int, target: str
) -> dict[str, Any] | None:
    for r in results:
        if r["scenario"] == scenario and r["concurrency"] == c and r["target"] == target:
            return r
    return None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def other_cores(r: dict[str, Any]) -> float | None:
    """CPU used during the window by processes outside this measurement (other work)."""
    busy, cpus = r["machine"]["busy"], r["machine"]["cpus"]
    if busy is None or not cpus:
        return None
    ours = r["client"]["cpu_cores"] + (r["gateway"]["cpu_cores"] or 0.0)
    ours += r["engine"]["cpu_cores"] or 0.0
    return max(0.0, busy * cpus - ours)


def results_section(meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for scenario in meta["scenarios"]:
        rows = [r for r in results if r["scenario"] == scenario["name"]]
        if not rows:
            continue
        out += [f"### {scenario['title']}", ""]
        out += [
            f"engine-sim `{' '.join(scenario['engine_args'])}`; "
            f"warm-up {scenario['warmup']:g}s, measured window {scenario['duration']:g}s"
            + (f" ({scenario['duration_c1']:g}s at c=1)" if scenario.get("duration_c1") else "")
            + ".",
            "",
        ]
        floors = [r for r in rows if r["target_kind"] == "floor" and r["chunks_per_request"]]
        if any(r["tokens_per_request"] / r["chunks_per_request"] > 1.5 for r in floors):
            per = ", ".join(
                f"c={r['concurrency']}: {r['tokens_per_request'] / r['chunks_per_request']:.1f}"
                for r in floors
            )
            out += [
                "With no latency to wait out, the engine-sim's step loop runs ahead of its stream "
                "writes, so it ships several tokens per gRPC message (tokens per message at the "
                f"floor: {per}); `msgs/req` counts the messages (SSE content events for a "
                "gateway) each 128-token request arrived in.",
                "",
            ]
        floor_rate = {r["concurrency"]: r["req_per_s"] for r in floors}
        capped = [
            r
            for r in rows
            if r["target_kind"] != "floor" and floor_rate.get(r["concurrency"])
            and r["concurrency"] == max(scenario["levels"])
        ]  # fmt: skip
        if capped and all(
            r["req_per_s"] >= FLOOR_MATCH * floor_rate[r["concurrency"]] for r in capped
        ):
            out += [
                f"At c={capped[0]['concurrency']} every gateway matched the floor's throughput: "
                "the engine (its timing model, or the CPU it shares with client and gateway) "
                "sets throughput here, not the gateway, so compare gateway CPU ms/req rather "
                "than req/s.",
                "",
            ]
        header = [
            "c", "target", "req/s", "÷ floor", "out tok/s", "TTFT p50", "TTFT p99", "ITL p50",
            "ITL p99", "errors", "msgs/req",
        ]  # fmt: skip
        body = [
            [
                str(r["concurrency"]),
                r["target"],
                fmt(r["req_per_s"], 2),
                ratio(r["req_per_s"], floor_rate.get(r["concurrency"]))
                if r["target_kind"] != "floor"
                else "",
                fmt(r["out_tok_per_s"], 0),
                fmt(r["ttft_ms"]["p50"]),
                fmt(r["ttft_ms"]["p99"]),
                fmt(r["itl_ms"]["p50"], 2),
                fmt(r["itl_ms"]["p99"], 2),
                str(r["errors"]),
                fmt(r["chunks_per_request"], 1),
            ]
            for r in rows
        ]
        out += table(header, body)
        out.append("")
        header = [
            "c", "target", "gateway CPU ms/req", "gateway cores", "engine CPU ms/req",
            "client cores", "other cores", "machine busy", "gateway RSS MB start → end",
        ]  # fmt: skip
        body = []
        for r in rows:
            gw = r["gateway"]
            start, end = rss_mb(gw["rss_start"]), rss_mb(gw["rss_end"])
            body.append(
                [
                    str(r["concurrency"]),
                    r["target"],
                    fmt(gw["cpu_ms_per_req"], 2),
                    fmt(gw["cpu_cores"], 2),
                    fmt(r["engine"]["cpu_ms_per_req"], 2),
                    fmt(r["client"]["cpu_cores"], 2),
                    fmt(other_cores(r), 2),
                    f"{r['machine']['busy']:.0%}" if r["machine"]["busy"] is not None else "–",
                    f"{fmt(start, 0)} → {fmt(end, 0)}" if start is not None else "–",
                ]
            )
        out += table(header, body)
        out.append("")
    return out


CLIENTS_SECTION = "## Two clients: bench/load.py and aiperf"

CLIENT_DIFFERENCES = [
    "Same requests: aiperf replays, verbatim (`--custom-dataset-type raw_payload`), the body "
    "load.py sends for each turn of the same conversations (same seed, same first "
    "conversation), one request in flight per conversation and the turns in order; "
    "`--use-server-token-count` takes output tokens from the usage block as load.py does. "
    "aiperf adds its own headers (X-Request-ID, X-Correlation-ID) and spreads sessions over "
    "an aiohttp connection pool; load.py keeps one keep-alive connection per slot.",
    "Same closed loop, different edges: load.py runs straight from warm-up into the measured "
    "window and counts the requests that complete inside it (in-flight ones at its end are "
    "dropped); aiperf lets the warm-up drain, starts the measured phase's sessions anew "
    "(ramped over min(warm-up, 2 s), as load.py ramps its slots), stops issuing at the "
    "duration and waits for every request issued before it, and divides by that longer span. "
    "Its req/s therefore includes a ramp and a drain at lower concurrency (column `req/s`, "
    "aiperf's request_throughput); `req/s after ramp` counts, from aiperf's per-request "
    "records, the requests completing between the ramp's end and the duration's, as load.py "
    "counts its window. Its sessions start at a conversation's first turn (shorter prompts) "
    "where load.py's window meets conversations mid-way.",
    "TTFT: both from just before the request is written to the first content chunk. "
    "ITL: load.py's is every gap between successive content chunks over all requests, which "
    "aiperf reports as inter-chunk latency (ICL); that is the `ITL` column for both. aiperf's "
    "own ITL is one value per request, (latency − TTFT) ÷ (output tokens − 1), a per-request "
    "mean: column `aiperf ITL`. Percentiles: load.py nearest-rank; aiperf interpolated (ICL "
    "from a t-digest).",
    "Engine TTFT: the engine-sim's own, from a Generate call's arrival to its first write "
    "(`--timing-log`, bench/engine_timing.py), over the client's measured window. TTFT minus "
    "engine TTFT is what the gateway added around the engine; engine TTFT itself moves with how "
    "the gateway delivers requests together (prefills queue behind each other).",
    "Gateway CPU for aiperf: /proc samples every 0.25 s of the gateway's process tree, "
    "differenced between the samples nearest inside aiperf's measured phase (its phase "
    "manifest's wall-clock edges), divided by the requests of that phase. Client cores: "
    "aiperf's whole process tree (controller, workers, record processors) over the same span.",
]


def clients_section(
    meta: dict[str, Any], results: list[dict[str, Any]], aiperf: list[dict[str, Any]]
) -> list[str]:
    """Both load clients against the same gateways, side by side."""
    failures = meta.get("aiperf_failures") or []
    if not aiperf and not failures and not meta.get("client_note"):
        return []
    out = [CLIENTS_SECTION, ""]
    version = next((r.get("aiperf_version") for r in aiperf), None) or "?"
    out += [
        f"aiperf {version} (NVIDIA's benchmark client) measured the same gateways on the "
        "standard workload, each with a fresh engine-sim and gateway of its own, in the same "
        "run; `own` rows are the bench/load.py measurements above. Latencies in ms.",
        "",
    ]
    if meta.get("client_note"):
        out += [f"Note: {meta['client_note']}.", ""]
    header = [
        "c", "target", "client", "req/s", "req/s after ramp", "out tok/s", "TTFT p50",
        "TTFT p99", "engine TTFT p50", "engine TTFT p99", "ITL p50", "ITL p99",
        "aiperf ITL p50", "aiperf ITL p99", "errors", "gateway CPU ms/req", "client cores",
        "machine busy",
    ]  # fmt: skip
    for scenario in meta["scenarios"]:
        mine = [r for r in aiperf if r["scenario"] == scenario["name"]]
        if not mine:
            continue
        out += [f"### {scenario['title']}", ""]
        body = []
        for r in sorted(mine, key=lambda r: r["concurrency"]):
            own = find(results, r["scenario"], r["concurrency"], r["target"])
            if own is not None:
                body.append(_own_row(own))
            body.append(_aiperf_row(r))
        out += table(header, body)
        out.append("")
    if failures:
        out += ["aiperf failed in: " + "; ".join(f"`{f.splitlines()[0]}`" for f in failures), ""]
    out += ["How the two clients differ:", ""]
    out += [f"- {line}" for line in CLIENT_DIFFERENCES]
    out.append("")
    return out


def _own_row(r: dict[str, Any]) -> list[str]:
    return [
        str(r["concurrency"]), r["target"], "own", fmt(r["req_per_s"], 2), "–",
        fmt(r["out_tok_per_s"], 0), fmt(r["ttft_ms"]["p50"]), fmt(r["ttft_ms"]["p99"]),
        *_engine_ttft(r), fmt(r["itl_ms"]["p50"], 2), fmt(r["itl_ms"]["p99"], 2), "–", "–",
        str(r["errors"]),
        fmt(r["gateway"]["cpu_ms_per_req"], 2), fmt(r["client"]["cpu_cores"], 2),
        _percent(r["machine"]["busy"]),
    ]  # fmt: skip


def _aiperf_row(r: dict[str, Any]) -> list[str]:
    cpu = r.get("cpu") or {}
    return [
        str(r["concurrency"]), r["target"], "aiperf", fmt(r["req_per_s"], 2),
        fmt((r.get("steady") or {}).get("req_per_s"), 2), fmt(r["out_tok_per_s"], 0),
        fmt(r["ttft_ms"]["p50"]), fmt(r["ttft_ms"]["p99"]), *_engine_ttft(r),
        fmt(r["icl_ms"]["p50"], 2), fmt(r["icl_ms"]["p99"], 2), fmt(r["itl_ms"]["p50"], 2),
        fmt(r["itl_ms"]["p99"], 2), str(r["errors"]),
        fmt((cpu.get("gateway") or {}).get("cpu_ms_per_req"), 2),
        fmt((cpu.get("client") or {}).get("cpu_cores"), 2), _percent(cpu.get("machine_busy")),
    ]  # fmt: skip


def _engine_ttft(r: dict[str, Any]) -> list[str]:
    timing = r.get("engine_timing") or {}
    return [fmt(timing.get("ttft_p50_ms")), fmt(timing.get("ttft_p99_ms"))]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def ratios_section(meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    herdsmen = [t["name"] for t in meta["targets"] if t["kind"] == "herdsman"]
    has_smg = any(t["kind"] == "smg" for t in meta["targets"])
    has_floor = any(t["kind"] == "floor" for t in meta["targets"])
    out = ["## Ratios", ""]
    if has_smg and herdsmen:
        out += [
            "**Gateway CPU per request, herdsman ÷ SMG** (lower is better; 1.00× = parity):",
            "",
        ]
        body = []
        for scenario in meta["scenarios"]:
            for c in scenario["levels"]:
                smg = find(results, scenario["name"], c, "smg")
                cells = []
                for name in herdsmen:
                    h = find(results, scenario["name"], c, name)
                    cells.append(
                        ratio(
                            h and h["gateway"]["cpu_ms_per_req"],
                            smg and smg["gateway"]["cpu_ms_per_req"],
                        )
                    )
                body.append([scenario["name"], str(c), *cells])
        out += table(["scenario", "c", *herdsmen], body)
        out.append("")
    multi = [n for n in herdsmen if n != "herdsman-w1"]
    if "herdsman-w1" in herdsmen and multi:
        out += ["**Throughput with N workers ÷ 1 worker** (req/s):", ""]
        body = []
        for scenario in meta["scenarios"]:
            for c in scenario["levels"]:
                one = find(results, scenario["name"], c, "herdsman-w1")
                for name in multi:
                    many = find(results, scenario["name"], c, name)
                    smg = find(results, scenario["name"], c, "smg")
                    body.append(
                        [
                            scenario["name"],
                            str(c),
                            f"{name} ÷ herdsman-w1",
                            ratio(many and many["req_per_s"], one and one["req_per_s"]),
                            ratio(many and many["req_per_s"], smg and smg["req_per_s"]),
                        ]
                    )
        out += table(["scenario", "c", "ratio", "value", "same herdsman ÷ SMG"], body)
        out.append("")
    if has_floor:
        out += ["**TTFT added over the engine floor at concurrency 1** (gateway − floor):", ""]
        body = []
        for scenario in meta["scenarios"]:
            if 1 not in scenario["levels"]:
                continue
            floor = find(results, scenario["name"], 1, "floor")
            for t in meta["targets"]:
                if t["kind"] == "floor":
                    continue
                g = find(results, scenario["name"], 1, t["name"])
                if not (g and floor):
                    continue
                row = [scenario["name"], t["name"]]
                for key in ("p50", "p99"):
                    a, b = g["ttft_ms"][key], floor["ttft_ms"][key]
                    row.append("–" if a is None or b is None else f"{a - b:+.1f} ms")
                a, b = g["itl_ms"]["p50"], floor["itl_ms"]["p50"]
                row.append("–" if a is None or b is None else f"{a - b:+.2f} ms")
                body.append(row)
        out += table(
            ["scenario", "gateway", "TTFT p50 added", "TTFT p99 added", "ITL p50 added"], body
        )
        out.append("")
    return out


def sample_drift(samples: list[float]) -> str:
    """First → last sample (PSS or USS), and the drift over the second half of the window (the
    first half is when the tokenization caches fill to their budgets)."""
    if not samples:
        return "–"
    half = samples[len(samples) // 2 :]
    drift = (half[-1] - half[0]) / half[0] * 100 if half[0] else 0.0
    return (
        f"{samples[0]:.0f} → {samples[-1]:.0f} ({min(samples):.0f}–{max(samples):.0f}); "
        f"second half {drift:+.1f}%"
    )


def memory_section(results: list[dict[str, Any]]) -> list[str]:
    out = ["## Memory", ""]
    out += [
        "Resident set size of the gateway's whole process tree: before warm-up, at the start and "
        "at the end of the measured window, and the samples taken during it (first → last, with "
        "their range); then the tree's PSS samples (shared pages divided among the processes "
        "that map them) and USS samples (pages no other process maps: PSS also moves when "
        "other processes map the same library files, USS only when the tree's own memory "
        "does), with their drift over the second half of the window. "
        "Per process at the end: pid:comm=MB.",
        "",
    ]
    body = []
    for r in results:
        gw = r["gateway"]
        if not gw.get("rss_start"):
            continue
        samples = [s[1] for s in gw.get("rss_samples_mb") or []]
        pss = [s[2] for s in gw.get("rss_samples_mb") or [] if len(s) > 2]
        uss = [s[3] for s in gw.get("rss_samples_mb") or [] if len(s) > 3]
        per_process = ", ".join(
            f"{p['pid']}:{p['comm']}={p['rss_kb'] / 1024:.0f}" for p in gw["rss_end"]["processes"]
        )
        body.append(
            [
                r["scenario"],
                str(r["concurrency"]),
                r["target"],
                fmt(rss_mb(gw["rss_before_warmup"]), 0),
                fmt(rss_mb(gw["rss_start"]), 0),
                fmt(rss_mb(gw["rss_end"]), 0),
                f"{samples[0]:.0f} → {samples[-1]:.0f} ({min(samples):.0f}–{max(samples):.0f}, "
                f"n={len(samples)})"
                if samples
                else "–",
                sample_drift(pss),
                sample_drift(uss),
                per_process,
            ]
        )
    header = ["scenario", "c", "target", "before warm-up", "start", "end", "samples: first → last",
              "PSS samples: first → last", "USS samples: first → last"]  # fmt: skip
    out += table([*header, "processes at end"], body)
    out.append("")
    return out


def commands_section(
    meta: dict[str, Any], results: list[dict[str, Any]], aiperf: list[dict[str, Any]] | None = None
) -> list[str]:
    out = ["## Commands", ""]
    out += [f"The whole run: `{meta.get('invocation', './bench/run.sh')}`.", ""]
    out += [
        "Per measurement (one example per scenario and target; other concurrency levels differ "
        "only in `--concurrency`, `--duration`, `--conversation-offset`, ports and pids):",
        "",
        "```sh",
    ]
    seen: set[tuple[str, str, str]] = set()
    for r in [*results, *(aiperf or [])]:
        client = " (aiperf)" if r.get("kind") == "aiperf" else ""
        key = (r["scenario"], r["target"], client)
        if key in seen:
            continue
        seen.add(key)
        out.append(f"# {r['scenario']} / {r['target']}{client}")
        commands = r["commands"]
        out.append(commands["engine"] + " &")
        if commands["gateway"]:
            env = "HF_ENDPOINT=http://127.0.0.1:9 " if r["target_kind"] == "smg" else ""
            out.append(env + commands["gateway"] + " &")
        if commands.get("dataset"):
            out.append(commands["dataset"])
        out.append(commands["client"])
    out += ["```", ""]
    return out


def observations(meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    notes: list[str] = []
    background = meta.get("background_busy_before", 0.0)
    if background > BACKGROUND_WARN:
        notes.append(
            f"The machine was already {background:.0%} busy just before the run started (other "
            "processes); see `other cores` per measurement for how much that perturbed each."
        )
    forced: dict[str, list[float]] = {}
    saturated: list[str] = []
    disturbed: list[str] = []
    for r in results:
        where = f"{r['scenario']} c={r['concurrency']} {r['target']}"
        if r.get("round"):
            where += f" (round {r['round']})"
        if r["errors"]:
            notes.append(f"{where}: {r['errors']} errors, e.g. `{r['error_samples'][0]}`.")
        if r["warmup"]["errors"]:
            notes.append(
                f"{where}: {r['warmup']['errors']} errors during warm-up, e.g. "
                f"`{r['warmup']['error_samples'][0]}`."
            )
        if r["client"]["cpu_cores"] > CLIENT_CORES_WARN:
            notes.append(
                f"{where}: the load client used {r['client']['cpu_cores']:.2f} cores, competing "
                "with the gateway and engine for the machine's CPUs."
            )
        if r["machine"]["busy"] is not None and r["machine"]["busy"] > MACHINE_BUSY_WARN:
            saturated.append(f"{where} ({r['machine']['busy']:.0%})")
        other = other_cores(r)
        if other is not None and other > OTHER_CORES_WARN:
            disturbed.append(f"{where} ({other:.2f})")
        if r["reasoning_chunks"]:
            notes.append(f"{where}: {r['reasoning_chunks']} chunks came as reasoning_content.")
        if r["prompt_tokens"]["server_mismatches"]:
            notes.append(
                f"{where}: {r['prompt_tokens']['server_mismatches']} responses reported a prompt "
                "token count other than the workload's."
            )
        stop = r.get("stop", {}).get("gateway")
        if stop and stop["sigkill"]:
            forced.setdefault(r["target"], []).append(stop["stop_s"])
    if saturated:
        notes.append(
            "All CPUs busy (throughput bounded by the CPUs that client, engine-sim and gateway "
            "share): " + ", ".join(saturated) + "."
        )
    if disturbed:
        notes.append(
            "Processes outside the measurement used CPU during the window (cores): "
            + ", ".join(disturbed)
            + ". Numbers from these runs are perturbed; rerun on a quiet machine to trust them."
        )
    for target, times in forced.items():
        runs = sum(1 for r in results if r["target"] == target)
        notes.append(
            f"{target}: still running {max(times):.0f}s after SIGTERM in {len(times)} of {runs} "
            "runs, then stopped with SIGKILL (the harness does not wait out graceful drains)."
        )
    return notes


def workload_line(results: list[dict[str, Any]]) -> str:
    means = [r["prompt_tokens"]["mean"] for r in results if r["prompt_tokens"]["mean"]]
    lows = [r["prompt_tokens"]["min"] for r in results if r["prompt_tokens"]["min"]]
    highs = [r["prompt_tokens"]["max"] for r in results if r["prompt_tokens"]["max"]]
    if not means:
        return ""
    return (
        f"Prompts actually sent: {min(lows)}–{max(highs)} tokens, run means "
        f"{min(means):.0f}–{max(means):.0f}."
    )


def render(
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    out_dir: Path,
    aiperf: list[dict[str, Any]] | None = None,
) -> str:
    m, v, smg = meta["machine"], meta["versions"], meta["smg_defaults"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.sh` (mode **{meta['mode']}**) on {meta['started']} "
        f"in {meta.get('elapsed_s', 0):.0f}s. Raw results: `{out_dir.name}` under "
        "`bench/results/` (not committed).",
        "",
        "## Setup",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}. Client, "
        "engine-sim and gateway share these CPUs.",
        f"- Background load before the run: {meta.get('background_busy_before', 0):.0%} of all "
        "CPUs.",
        f"- Versions: herdsman {v['herdsman']}; SMG {v['smg']}; Python {v['python']}.",
        f"- Network: a private network namespace (interfaces: {', '.join(meta['interfaces'])}); "
        "all traffic on 127.0.0.1.",
        "- Workload: streaming chat completions (`stream_options.include_usage`), "
        "`max_tokens: 128`, `ignore_eos: true` (every request yields exactly 128 tokens; the "
        "engine-sim runs with `--tokens-per-message 1`). Multi-turn conversations built "
        "deterministically from a seed (`bench/workload.py`): a system prompt, then "
        "user/assistant turns; each request is the "
        "previous one plus a reply and a new user message, so it shares a long prefix with it. "
        "Prompt lengths 1–4k tokens, ~2.4k on average (Qwen3 tokenizer). " + workload_line(results),
        "- The floor is the same workload sent straight to the engine-sim over gRPC "
        "(VllmEngine.Generate with the chat-templated prompt as token ids, stream=True).",
        "- Each measurement starts a fresh engine-sim (empty prefix cache) and gateway; "
        "targets are interleaved per concurrency level. Closed loop: C client tasks, one request "
        "in flight each, keep-alive HTTP/1.1.",
        "- TTFT: request sent → first content token received. ITL: time between content chunks.",
        "- Gateway CPU: utime+stime of the gateway's root process and all its descendants "
        "(/proc, plus reaped children via cutime/cstime), over the measured window, divided by "
        "requests completed. /proc counts in clock ticks (10 ms) per process, so per-request "
        "figures from windows with few requests (c=1) are coarse. Client cores = the load "
        "client's own CPU ÷ window; other cores = machine busy time not used by client, engine "
        "or gateway (other processes on the machine).",
        f"- SMG: `smg launch` with its defaults (tokenizer cache L0 "
        f"`--tokenizer-cache-enable-l0` default {smg.get('tokenizer-cache-enable-l0')}, L1 "
        f"`--tokenizer-cache-enable-l1` default {smg.get('tokenizer-cache-enable-l1')}; "
        f"`--reasoning-parser` default {smg.get('reasoning-parser')}, which picks the Qwen3 "
        "parser from the model name). To make both gateways do the same work (plain "
        "`content`, no reasoning parsing), every request carries `separate_reasoning: false`, "
        "which both honour; `--reasoning-parser passthrough` did not change SMG 1.13.0's "
        "output for this model. herdsman runs with its defaults too: fastokens encodes "
        "(parity-checked for this tokenizer), so `--tokenizer-cache auto` leaves the L0/L1 "
        "cache off (it costs fastokens more than it saves: docs/benchmarks-tokenizer.md).",
        "",
    ]
    analysis = Path(__file__).with_name("ANALYSIS.md")
    if analysis.is_file():
        lines += [analysis.read_text(encoding="utf-8").rstrip(), ""]
    notes = observations(meta, results)
    if notes:
        lines += ["## Observations from this run", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    lines += ["## Results", ""]
    lines += ["Latencies in ms. `–`: not applicable.", ""]
    lines += results_section(meta, results)
    lines += clients_section(meta, results, aiperf or [])
    lines += ratios_section(meta, results)
    lines += memory_section(results)
    lines += commands_section(meta, results, aiperf)
    return "\n".join(lines).rstrip() + "\n"


HTTP_SECTION = "## HTTP server: own vs uvicorn vs granian"


def http_section(meta: dict[str, Any], results: list[dict[str, Any]], out_dir: Path) -> str:
    """The HTTP server comparison (mode http): its own section of docs/benchmarks.md."""
    m, v = meta["machine"], meta["versions"]
    lines = [
        HTTP_SECTION,
        "",
        f"Generated by `{meta.get('invocation', './bench/run.sh --http-servers')}` on "
        f"{meta['started']} in {meta.get('elapsed_s', 0):.0f}s (raw results: `{out_dir.name}` "
        "under `bench/results/`), on the harness and workload described above.",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu_model']}; client, engine-sim and gateway share "
        "them. All traffic on 127.0.0.1 in a private network namespace.",
        f"- Versions: herdsman {v['herdsman']}; uvicorn {v.get('uvicorn', '?')} (httptools "
        f"{v.get('httptools', '?')}, uvloop {v.get('uvloop', '?')}); granian "
        f"{v.get('granian', '?')}; Python {v['python']}.",
        "- `own-server`, `uvicorn`, `granian`: the same GatewayApp with the same serving context "
        "(`bench/asgi_gateway.py`), one process each: herdsman's own HTTP server; uvicorn with "
        "httptools and uvloop (`lifespan on`, no access log); granian's ASGI interface (one "
        "worker, one runtime thread, single-threaded runtime, uvloop, HTTP/1 only; a supervisor "
        "process and the worker, both counted). The ASGI adapter streams each SSE frame as one "
        "`http.response.body` message and cancels the handler on `http.disconnect`, as "
        "Starlette's StreamingResponse does.",
        "- `herdsman-w1`: `herdsman serve --workers 1` as shipped (supervisor, one gateway "
        "process, a warm spare), for reference.",
        "- Gateway CPU: utime+stime of the server's whole process tree over the measured "
        "window, divided by requests completed.",
        "",
    ]
    rounds = meta.get("rounds", 1)
    if rounds > 1:
        lines += [
            f"Each measurement ran {rounds} times, the targets interleaved within each round; "
            "figures are medians over the rounds, CPU with its range (min–max), and added "
            "TTFT is against the floor of the same round.",
            "",
        ]
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        runs.setdefault((r["scenario"], r["concurrency"], r["target"]), []).append(r)
    for scenario in meta["scenarios"]:
        if not any(r["scenario"] == scenario["name"] for r in results):
            continue
        lines += [f"### {scenario['title']}", ""]
        lines += [
            f"engine-sim `{' '.join(scenario['engine_args'])}`, `max_tokens` "
            f"{scenario.get('max_tokens', 128)}; warm-up {scenario['warmup']:g}s, measured "
            f"window {scenario['duration']:g}s.",
            "",
        ]
        header = [
            "c", "target", "req/s", "TTFT p50", "TTFT p99", "added TTFT p50", "ITL p50",
            "errors", "gateway CPU ms/req", "÷ own-server", "gateway cores", "other cores",
        ]  # fmt: skip
        body = []
        for c in scenario["levels"]:
            floor = {r.get("round"): r for r in runs.get((scenario["name"], c, "floor"), [])}
            own = runs.get((scenario["name"], c, "own-server"), [])
            own_cpu = _median([r["gateway"]["cpu_ms_per_req"] for r in own])
            for target in meta["targets"]:
                group = runs.get((scenario["name"], c, target["name"]), [])
                if group:
                    body.append(_http_row(c, target, group, floor, own_cpu))
        lines += table(header, body)
        lines.append("")
    notes = observations(meta, results)
    if notes:
        lines += ["Observations from this run:", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    analysis = Path(__file__).with_name("HTTP_SERVERS.md")
    if analysis.is_file():
        lines += [analysis.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _http_row(
    c: int,
    target: dict[str, Any],
    group: list[dict[str, Any]],
    floor: dict[int | None, dict[str, Any]],
    own_cpu: float | None,
) -> list[str]:
    is_floor = target["kind"] == "floor"
    added = [
        r["ttft_ms"]["p50"] - floor[r.get("round")]["ttft_ms"]["p50"]
        for r in group
        if not is_floor and r.get("round") in floor and r["ttft_ms"]["p50"] is not None
    ]
    cpus = [r["gateway"]["cpu_ms_per_req"] for r in group if r["gateway"]["cpu_ms_per_req"]]
    cpu = _median(cpus)
    cpu_text = fmt(cpu, 3)
    if len(cpus) > 1:
        cpu_text += f" ({min(cpus):.3f}–{max(cpus):.3f})"
    return [
        str(c),
        target["name"],
        fmt(_median([r["req_per_s"] for r in group]), 1),
        fmt(_median([r["ttft_ms"]["p50"] for r in group]), 2),
        fmt(_median([r["ttft_ms"]["p99"] for r in group]), 2),
        f"{_median(added):+.2f} ms" if added else "–",
        fmt(_median([r["itl_ms"]["p50"] for r in group]), 2),
        str(sum(r["errors"] for r in group)),
        cpu_text,
        "" if is_floor else ratio(cpu, own_cpu),
        fmt(_median([r["gateway"]["cpu_cores"] for r in group]), 2),
        fmt(_median([other_cores(r) for r in group]), 2),
    ]


def split_http_section(text: str) -> tuple[str, str]:
    """(the document without the HTTP server section, the section)."""
    start = text.find(HTTP_SECTION)
    if start < 0:
        return text, ""
    end = text.find("\n## ", start + len(HTTP_SECTION))
    end = len(text) if end < 0 else end + 1
    return text[:start] + text[end:], text[start:end]


# bench/memory.py's section, kept as it is by the runs of this module.
MEMORY_BEGIN = "<!-- bench/memory.py: begin -->"
MEMORY_END = "<!-- bench/memory.py: end -->"


def split_memory_section(text: str) -> tuple[str, str]:
    """(the document without bench/memory.py's section, the section with its markers)."""
    start, end = text.find(MEMORY_BEGIN), text.find(MEMORY_END)
    if start < 0 or end < start:
        return text, ""
    end += len(MEMORY_END)
    return text[:start] + text[end:].lstrip("\n"), text[start:end] + "\n"


def write_report(out_dir: Path, docs: Path) -> None:
    """Write the report; the HTTP server section, bench/memory.py's section and the rest come
    from separate runs, and each kind of run keeps the others' parts of the document."""
    meta, results = load(out_dir)
    docs.parent.mkdir(parents=True, exist_ok=True)
    rest, memory = split_memory_section(docs.read_text() if docs.exists() else "")
    rest, section = split_http_section(rest)
    if meta["mode"] == "http":
        section = http_section(meta, results, out_dir)
    else:
        rest = render(meta, results, out_dir, load_aiperf(out_dir))
    parts = [part.rstrip() + "\n" for part in (rest, memory, section) if part.strip()]
    docs.write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("results", help="a run directory under bench/results/")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent.parent / "docs/benchmarks.md")
    )
    args = parser.parse_args(argv)
    write_report(Path(args.results), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
