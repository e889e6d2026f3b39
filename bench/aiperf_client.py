"""aiperf (NVIDIA's LLM benchmark client) as a second load client, on the standard workload.

    python -m bench.aiperf_client dataset DIR --conversations 200 [--conversation-offset K]

aiperf 0.13 runs in its own venv (bench/run.sh installs it, pinned, before entering the
loopback-only namespace). It replays the very requests bench/load.py sends: the dataset is a
directory of ``raw_payload`` files, one JSONL file per conversation of bench/workload.py, one
line per turn holding the complete request body load.py would send for it. aiperf ships such a
body verbatim and walks a conversation's file line by line, one request in flight per
conversation, as load.py's slots do. The files are named so that aiperf's sequential sampling
takes the conversations in load.py's order (offset, offset + 1, ...); aiperf's warm-up phase
uses the first of them and its measured phase the next, where load.py's slots run on from
warm-up into the window.

``run_aiperf`` launches one profile (closed loop at concurrency C, a warm-up phase, then a
measured phase of a fixed duration), samples the CPU of the gateway, engine and aiperf trees and
of the machine meanwhile, and turns aiperf's export (profile_export_aiperf.json) into a result
in the shape of bench/runner.py's, so bench/report.py can set both clients side by side.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
AIPERF_VERSION = "0.13.0"
DEFAULT_VENV = Path.home() / ".cache/herdsman-bench/aiperf-venv"
EXPORT = "profile_export_aiperf.json"
RECORDS = "profile_export.jsonl"
SAMPLE_INTERVAL_S = 0.25
# The workload's mean turns per conversation (bench.workload.describe: 6.9); sizing only.
TURNS_PER_CONVERSATION = 6.0
# Each request of the standard workload takes about 1.45 s on the realistic engine-sim (128
# tokens at ~11 ms); the dataset is sized for requests taking no less than MIN_REQUEST_S.
MIN_REQUEST_S = 1.0


def aiperf_path() -> Path:
    venv = Path(os.environ.get("BENCH_AIPERF_VENV", str(DEFAULT_VENV)))
    return venv / "bin/aiperf"


def aiperf_version(aiperf: Path) -> str | None:
    """The installed aiperf version, or None when there is none."""
    python = aiperf.parent / "python"
    if not aiperf.exists() or not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('aiperf'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


# ---- the dataset -----------------------------------------------------------------------------


def request_body(
    messages: list[dict[str, str]], model: str, max_tokens: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """The body bench/load.py's HttpDriver.body sends, key for key."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def conversations_needed(concurrency: int, seconds: float) -> int:
    """Enough conversations that aiperf never wraps around to reuse one within a run."""
    requests = concurrency * seconds / MIN_REQUEST_S
    return int(requests / TURNS_PER_CONVERSATION) + 2 * concurrency + 16


def write_dataset(
    directory: Path,
    workload: Workload,
    first: int,
    count: int,
    *,
    model: str = "qwen3",
    max_tokens: int = 128,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Conversations first .. first+count-1 as aiperf raw_payload files; returns a summary."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = {"separate_reasoning": False} if extra is None else extra
    turns = 0
    prompt_tokens: list[int] = []
    for n in range(count):
        lines = []
        for turn in workload.conversation(first + n):
            body = request_body(turn.messages, model, max_tokens, extra)
            lines.append(json.dumps(body, separators=(",", ":")))
            prompt_tokens.append(turn.prompt_tokens)
        turns += len(lines)
        # Zero-padded: aiperf loads the files in sorted name order.
        (directory / f"conv-{n:07d}.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "conversations": count,
        "first_conversation": first,
        "requests": turns,
        "prompt_tokens_mean": round(sum(prompt_tokens) / max(len(prompt_tokens), 1), 1),
    }


# ---- CPU sampling ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    wall_ns: int
    gateway_ms: float
    engine_ms: float
    client_ms: float
    machine_busy: int
    machine_total: int


class Sampler:
    """Samples the CPU counters every SAMPLE_INTERVAL_S in a thread, stamped with wall time
    (aiperf's export gives its phase edges as wall-clock nanoseconds)."""

    def __init__(self, gateway_pid: int | None, engine_pid: int | None) -> None:
        self.gateway_pid = gateway_pid
        self.engine_pid = engine_pid
        self.client_pid: int | None = None
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _take(self) -> Sample:
        busy, total = procstat.machine_cpu()
        # One walk of /proc for all three trees (procstat.tree_cpu_ms walks it per call).
        stats = procstat._all_stats()
        children: dict[int, list[int]] = {}
        for stat in stats.values():
            children.setdefault(stat.ppid, []).append(stat.pid)

        def cpu(root: int | None) -> float:
            ticks, pending = 0, [root] if root in stats else []
            while pending:
                pid = pending.pop()
                ticks += stats[pid].own_ticks + stats[pid].reaped_ticks
                pending.extend(children.get(pid, ()))
            return ticks * 1000.0 / procstat.CLOCK_TICKS

        return Sample(
            time.time_ns(),
            cpu(self.gateway_pid),
            cpu(self.engine_pid),
            cpu(self.client_pid),
            busy,
            total,
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._take())
            self._stop.wait(SAMPLE_INTERVAL_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start_ns: int, end_ns: int) -> tuple[Sample, Sample] | None:
        """The samples nearest inside [start_ns, end_ns]: the widest sampled span within it."""
        stamps = [s.wall_ns for s in self.samples]
        first = bisect.bisect_left(stamps, start_ns)
        last = bisect.bisect_right(stamps, end_ns) - 1
        if first >= last:
            return None
        return self.samples[first], self.samples[last]


# ---- running aiperf ----------------------------------------------------------------------------


@dataclass
class AiperfRun:
    label: str
    url: str
    concurrency: int
    duration: float
    warmup: float
    dataset: Path
    artifacts: Path
    tokenizer: Path
    model: str = "qwen3"
    grace: float = 30.0
    gateway_pid: int | None = None
    engine_pid: int | None = None


def ramp_seconds(run: AiperfRun) -> float:
    """load.py staggers its slots' starts over min(warm-up, 2 s); so does aiperf here."""
    return round(min(run.warmup, 2.0), 3)


def argv(run: AiperfRun, aiperf: Path) -> list[str]:
    ramp = str(ramp_seconds(run))
    return [
        str(aiperf), "profile",
        "--model", run.model, "--url", run.url, "--endpoint-type", "chat", "--streaming",
        "--custom-dataset-type", "raw_payload", "--input-file", str(run.dataset),
        "--dataset-sampling-strategy", "sequential",
        "--tokenizer", str(run.tokenizer),
        # Output tokens from the usage block, as bench/load.py counts them.
        "--use-server-token-count",
        "--request-timeout-seconds", "60",
        "--concurrency", str(run.concurrency),
        "--warmup-duration", str(run.warmup), "--warmup-concurrency-ramp-duration", ramp,
        # aiperf drains the warm-up before the measured phase starts its sessions anew: without
        # a ramp they would all start together and, every response being 128 tokens, stay in
        # lockstep (waves of C prefills at once).
        "--benchmark-duration", str(run.duration), "--concurrency-ramp-duration", ramp,
        "--benchmark-grace-period", str(run.grace),
        "--output-artifact-dir", str(run.artifacts),
        "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry", "--no-auto-plot",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    """aiperf loads a local tokenizer directory only with HF_HUB_OFFLINE unset (its offline
    mode takes the path for a hub repository id); the namespace has no network anyway."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # Each dataset serves one run: no cache of it under ~/.cache/aiperf.
    env["AIPERF_DATASET_MMAP_CACHE_ENABLED"] = "false"
    return env


def run_aiperf(run: AiperfRun, aiperf: Path, log: Path, timeout: float) -> dict[str, Any]:
    """Run one aiperf profile; its result in bench/runner.py's shape (the fields the report
    reads), plus aiperf's own ITL definition."""
    command = argv(run, aiperf)
    sampler = Sampler(run.gateway_pid, run.engine_pid)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=environment(), start_new_session=True,
        )  # fmt: skip
        sampler.client_pid = proc.pid
        sampler.start()
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        finally:
            sampler.stop()
            # aiperf's services are its children; none may outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
    export = run.artifacts / EXPORT
    if returncode != 0 or not export.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"aiperf failed ({returncode}):\n{tail}")
    result = parse_export(run, json.loads(export.read_text()), profiling_phase(run.artifacts))
    result["steady"] = steady_rate(run, result, run.artifacts / RECORDS)
    result["cpu"] = cpu_window(sampler, result)
    result["command"] = command
    return result


def profiling_phase(artifacts: Path) -> dict[str, Any]:
    manifest = json.loads((artifacts / "phase_manifest.json").read_text())
    return next(p for p in manifest["phases"] if p["phase_kind"] == "profiling")


def _ms(export: dict[str, Any], tag: str) -> dict[str, float | None]:
    metric = export.get(tag) or {}
    return {key: metric.get(key) for key in ("p50", "p90", "p99", "avg", "max")}


def _value(export: dict[str, Any], tag: str) -> float | None:
    metric = export.get(tag)
    return metric.get("avg") if metric else None


def parse_export(run: AiperfRun, export: dict[str, Any], phase: dict[str, Any]) -> dict[str, Any]:
    """The figures the report compares, from profile_export_aiperf.json (measured phase only)
    and the phase manifest (its edges and error count)."""
    completed = phase["successful_request_count"]
    return {
        "label": run.label,
        "kind": "aiperf",
        "aiperf_version": export.get("aiperf_version"),
        "concurrency": run.concurrency,
        "window_s": _value(export, "benchmark_duration"),
        "window_ns": [phase["start_ns"], phase["end_ns"]],
        "completed": completed,
        "errors": phase["error_request_count"],
        "error_samples": [str(e)[:300] for e in phase.get("error_summary", [])[:5]],
        "req_per_s": _value(export, "request_throughput"),
        "out_tok_per_s": _value(export, "output_token_throughput"),
        "ttft_ms": _ms(export, "time_to_first_token"),
        # load.py's ITL: every gap between successive content chunks, over all requests.
        "icl_ms": _ms(export, "inter_chunk_latency"),
        # aiperf's ITL: per request, (latency - TTFT) / (output tokens - 1).
        "itl_ms": _ms(export, "inter_token_latency"),
        "request_latency_ms": _ms(export, "request_latency"),
        "tokens_per_request": _value(export, "output_sequence_length"),
        "chunks_per_request": _value(export, "http_req_chunks_received"),
        "prompt_tokens_mean": _value(export, "input_sequence_length"),
        "was_cancelled": export.get("was_cancelled"),
    }


def steady_rate(run: AiperfRun, result: dict[str, Any], records: Path) -> dict[str, Any]:
    """Completions per second between the end of aiperf's ramp and the end of its duration,
    from its per-request records: its req/s without the ramp and the drain (aiperf's own
    request_throughput divides by the whole phase, drain included)."""
    start_ns = result["window_ns"][0] + int(ramp_seconds(run) * 1e9)
    end_ns = result["window_ns"][0] + int(run.duration * 1e9)
    done = tokens = 0
    with contextlib.suppress(OSError), open(records) as lines:
        for line in lines:
            record = json.loads(line)
            meta = record["metadata"]
            if meta.get("benchmark_phase") != "profiling" or record.get("error"):
                continue
            if start_ns <= meta["request_end_ns"] < end_ns:
                done += 1
                osl = record["metrics"].get("output_sequence_length") or {}
                tokens += int(osl.get("value") or 0)
    seconds = (end_ns - start_ns) / 1e9
    if seconds <= 0:
        return {"window_s": None, "completed": done, "req_per_s": None, "out_tok_per_s": None}
    return {
        "window_s": round(seconds, 3),
        "completed": done,
        "req_per_s": round(done / seconds, 3),
        "out_tok_per_s": round(tokens / seconds, 1),
    }


def cpu_window(sampler: Sampler, result: dict[str, Any]) -> dict[str, Any]:
    """CPU of gateway, engine, the aiperf process tree and the machine over the measured phase
    (between the samples nearest inside its edges)."""
    span = sampler.window(*result["window_ns"])
    if span is None:
        return {}
    a, b = span
    seconds = (b.wall_ns - a.wall_ns) / 1e9
    done = result["completed"] or 0
    total = b.machine_total - a.machine_total

    def figures(ms: float, present: bool) -> dict[str, float | None]:
        if not present:
            return {"cpu_ms_per_req": None, "cpu_cores": None}
        return {
            "cpu_ms_per_req": round(ms / done, 3) if done else None,
            "cpu_cores": round(ms / 1000 / seconds, 3),
        }

    return {
        "sampled_s": round(seconds, 2),
        "gateway": figures(b.gateway_ms - a.gateway_ms, bool(sampler.gateway_pid)),
        "engine": figures(b.engine_ms - a.engine_ms, bool(sampler.engine_pid)),
        "client": figures(b.client_ms - a.client_ms, True),
        "machine_busy": round((b.machine_busy - a.machine_busy) / total, 3) if total else None,
    }


def human_line(result: dict[str, Any]) -> str:
    def ms(stats: dict[str, float | None], key: str) -> str:
        value = stats.get(key)
        return "-" if value is None else f"{value:.1f}"

    gateway = result.get("cpu", {}).get("gateway", {}).get("cpu_ms_per_req")
    return (
        f"aiperf {result['label']} c={result['concurrency']}: {result['completed']} req in "
        f"{result['window_s'] or 0:.1f}s = {result['req_per_s'] or 0:.1f} req/s, "
        f"{result['out_tok_per_s'] or 0:.0f} tok/s, "
        f"TTFT p50/p99 {ms(result['ttft_ms'], 'p50')}/{ms(result['ttft_ms'], 'p99')} ms, "
        f"ICL p50/p99 {ms(result['icl_ms'], 'p50')}/{ms(result['icl_ms'], 'p99')} ms, "
        f"errors {result['errors']}, "
        f"gateway {'-' if gateway is None else f'{gateway:.1f}'} CPU ms/req"
    )


def main(argv_: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aiperf_client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dataset = sub.add_parser("dataset", help="write the standard workload as aiperf raw_payload")
    dataset.add_argument("directory")
    dataset.add_argument("--conversations", type=int, default=200)
    dataset.add_argument("--conversation-offset", type=int, default=0)
    dataset.add_argument("--max-tokens", type=int, default=128)
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--tokenizer", default=str(ROOT / "models/qwen3/tokenizer.json"))
    args = parser.parse_args(argv_)
    workload = Workload(args.tokenizer, args.seed)
    summary = write_dataset(
        Path(args.directory), workload, args.conversation_offset, args.conversations,
        max_tokens=args.max_tokens,
    )  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
