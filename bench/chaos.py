"""Chaos benchmark: a fleet of engine-sims at saturation, one killed and restarted every minute,
one slow throughout, and herdsman in front. Writes docs/reliability.md.

    ./bench/chaos.sh                       # 10 minutes (what docs/reliability.md reports)
    ./bench/chaos.sh --duration 120        # a short run

Every request is classified by how it ended, as a client sees it:
- ok: a complete response;
- lost: an error (HTTP status, or an SSE error event) before any token reached the client. The
  gateway retries those on another engine, so there must be none;
- cut: an SSE error event after tokens were streamed (its engine died under it: nothing can
  un-send those tokens, so the client learns of the failure);
- transport: the connection to the gateway broke (there must be none).
TTFT percentiles are split into requests started during a fault (from a kill until the engine is
back and 5 s more) and outside. The gateway's memory (its whole process tree) is sampled every 5 s.
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
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench import procstat
from bench.load import HttpDriver, Outcome
from bench.workload import Turn, Workload

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "qwen3"
REALISTIC = [
    "--ttft-base-ms", "5", "--prefill-ms-per-1k", "20", "--itl-base-ms", "10",
    "--itl-per-running-ms", "0.05", "--max-num-seqs", "16",
]  # fmt: skip
SLOW = [
    "--ttft-base-ms", "10", "--prefill-ms-per-1k", "40", "--itl-base-ms", "20",
    "--itl-per-running-ms", "0.1", "--max-num-seqs", "16",
]  # fmt: skip
FAULT_TAIL_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )


def _wait_line(process: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> None:
    """Wait for a line matching ``pattern`` on stdout, never past ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, line) for line in buffer.split(b"\n")[:-1]):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no {pattern!r} within {timeout}s")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"process exited ({process.wait()}) before {pattern!r}")
            buffer += chunk


class Engine:
    def __init__(self, index: int, flags: list[str], out: Path) -> None:
        self.index, self.flags, self.out = index, flags, out
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "herdsman.sim", "--model-path", str(MODEL)]
        argv += ["--port", str(self.port), "--seed", str(self.index), *self.flags]
        self.process = _spawn(argv, self.out / f"engine-{self.index}.log")
        _wait_line(self.process, rb"engine-sim listening", 60)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"


@dataclass
class Record:
    start: float  # seconds since the run started
    end: float
    stream: bool
    kind: str  # ok | lost | cut | transport
    error: str = ""
    ttft: float = math.nan


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    faults: list[tuple[float, float, int]] = field(default_factory=list)  # (killed, back, engine)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (t, tree RSS MB)
    # Requests at each engine (running and waiting, its GetServerInfo), sampled with memory.
    engine_load: list[list[int | None]] = field(default_factory=list)


def streamed(turn: Turn) -> bool:
    return (turn.conversation + turn.index) % 4 != 3


class ChaosClient(HttpDriver):
    """The benchmark's streaming client, plus unstreamed requests (a quarter of them)."""

    def body(self, turn: Turn) -> bytes:
        stream = streamed(turn)
        return msgspec.json.encode(
            {
                "model": self.model,
                "messages": turn.messages,
                "max_tokens": self.max_tokens,
                "ignore_eos": True,
                "stream": stream,
                **({"stream_options": {"include_usage": True}} if stream else {}),
                **self.extra,
            }
        )

    async def _response(self, reader: asyncio.StreamReader, started: float) -> tuple[Outcome, bool]:
        outcome, keep = await super()._response(reader, started)
        if outcome.error == "stream ended without data: [DONE]" and outcome.chunks == 0:
            # An unstreamed 200: a JSON body, not SSE. Whole at once: its TTFT is its latency.
            outcome.ok, outcome.error = True, ""
            outcome.ttft = time.perf_counter() - started
        return outcome, keep


def classify(outcome: Outcome) -> str:
    if outcome.ok:
        return "ok"
    if outcome.error.startswith("connection closed"):
        return "transport"
    return "cut" if outcome.chunks else "lost"


async def _load(
    client: ChaosClient, workload: Workload, run: Run, t0: float, duration: float, slots: int
) -> None:
    async def slot(index: int) -> None:
        k = index
        while time.monotonic() - t0 < duration:
            for turn in workload.conversation(k):
                if time.monotonic() - t0 >= duration:
                    return
                started = time.monotonic() - t0
                stream = streamed(turn)
                try:
                    outcome = await asyncio.wait_for(client.request(index, turn), 120)
                except (OSError, TimeoutError) as exc:
                    outcome = Outcome().fail(f"connection closed: {exc!r}")
                kind = classify(outcome)
                run.records.append(
                    Record(
                        started, time.monotonic() - t0, stream, kind, outcome.error, outcome.ttft
                    )
                )
                if kind != "ok":
                    break  # a failed turn ends the conversation: the history would be wrong
            k += slots

    await asyncio.gather(*(slot(i) for i in range(slots)))


async def _chaos(engines: list[Engine], run: Run, t0: float, duration: float, down: float) -> None:
    victims = [e for e in engines if e.flags is REALISTIC]
    turn = 0
    while True:
        await asyncio.sleep(60 - (time.monotonic() - t0) % 60)
        if time.monotonic() - t0 > duration - 30:
            return
        victim = victims[turn % len(victims)]
        turn += 1
        killed = time.monotonic() - t0
        victim.kill()
        await asyncio.sleep(down)
        await asyncio.to_thread(victim.start)
        run.faults.append((killed, time.monotonic() - t0, victim.index))


def _active_requests(engine: Engine) -> int | None:
    import grpc
    from smg_grpc_proto.generated import vllm_engine_pb2, vllm_engine_pb2_grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{engine.port}") as channel:
            stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
            info = stub.GetServerInfo(vllm_engine_pb2.GetServerInfoRequest(), timeout=2)
        return int(info.active_requests)
    except grpc.RpcError:
        return None  # down (killed) right now


async def _sample(
    gateway_pid: int, engines: list[Engine], run: Run, t0: float, duration: float
) -> None:
    while time.monotonic() - t0 < duration:
        rss = sum(p.rss_kb for p in procstat.tree(gateway_pid)) / 1024
        run.memory.append((time.monotonic() - t0, rss))
        loads = await asyncio.gather(*(asyncio.to_thread(_active_requests, e) for e in engines))
        run.engine_load.append(list(loads))
        await asyncio.sleep(5)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(run: Run, duration: float) -> dict[str, Any]:
    def in_fault(t: float) -> bool:
        return any(k <= t <= back + FAULT_TAIL_S for k, back, _ in run.faults)

    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    during: list[float] = []
    outside: list[float] = []
    for r in run.records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
        if r.kind != "ok":
            key = f"{r.kind}: {_error_kind(r.error)}"
            errors[key] = errors.get(key, 0) + 1
        elif not math.isnan(r.ttft) and r.stream:
            (during if in_fault(r.start) else outside).append(r.ttft * 1000)
    memory = [m for _, m in run.memory]
    loads = []
    for i in range(len(run.engine_load[0]) if run.engine_load else 0):
        seen = [sample[i] for sample in run.engine_load if sample[i] is not None]
        loads.append(sum(seen) / len(seen) if seen else math.nan)
    return {
        "engine_requests_mean": loads,
        "duration_s": duration,
        "requests": len(run.records),
        "unstreamed": sum(not r.stream for r in run.records),
        "kinds": kinds,
        "errors": errors,
        "faults": len(run.faults),
        "ttft_ms": {
            "during_faults": {
                "n": len(during),
                "p50": _percentile(during, 50),
                "p90": _percentile(during, 90),
                "p99": _percentile(during, 99),
            },
            "outside_faults": {
                "n": len(outside),
                "p50": _percentile(outside, 50),
                "p90": _percentile(outside, 90),
                "p99": _percentile(outside, 99),
            },
        },
        "memory_mb": {
            "first": memory[0] if memory else math.nan,
            "min": min(memory, default=math.nan),
            "max": max(memory, default=math.nan),
            "last": memory[-1] if memory else math.nan,
        },
    }


def _error_kind(error: str) -> str:
    match = re.search(r'"code":\s*"?([\w]+)', error)
    status = re.match(r"HTTP (\d+)", error)
    if status:
        return f"HTTP {status.group(1)} {match.group(1) if match else ''}".strip()
    if match:
        return f"SSE error {match.group(1)}"
    return error[:60]


def render(summary: dict[str, Any], run: Run, args: argparse.Namespace, out: Path) -> str:
    kinds = summary["kinds"]
    ttft = summary["ttft_ms"]
    lines = [
        "# Reliability: the chaos benchmark",
        "",
        f"Generated by `{args.invocation}` on {datetime.now(UTC).isoformat(timespec='seconds')} "
        f"({summary['duration_s']:.0f} s of load). Raw results: `{out.name}` under "
        "`bench/results/` (not committed).",
        "",
        "## Setup",
        "",
        f"- {len(args.engine_flags)} engine-sims (`herdsman engine-sim`, vLLM protocol, Qwen3 "
        "tokenizer), each running at most 16 sequences at once: three with the realistic "
        f"timing `{' '.join(REALISTIC)}`, one half as fast throughout: `{' '.join(SLOW)}`.",
        f"- herdsman with {args.processes} processes in front of all four "
        "(`--health-check-interval 1`, everything else default: 3 retries, circuit breakers).",
        f"- Load: {args.concurrency} closed-loop clients, multi-turn chats (`bench/workload.py`, "
        f"~2.4k-token prompts), `max_tokens` {args.max_tokens}; three requests in four streamed, "
        "one unstreamed.",
        f"- Faults: every 60 s one of the three realistic engines (in turn) is killed with "
        f"SIGKILL mid-load and restarted on the same port {args.down:g} s later "
        f"({summary['faults']} kills in this run).",
        "- All on one 2-core machine, inside a network namespace with only loopback.",
        "",
        "## Results",
        "",
        "| requests | ok | lost (error before any token) | cut mid-stream | transport errors |",
        "|---|---|---|---|---|",
        f"| {summary['requests']} | {kinds.get('ok', 0)} | **{kinds.get('lost', 0)}** | "
        f"{kinds.get('cut', 0)} | {kinds.get('transport', 0)} |",
        "",
        "Errors by kind:",
        "",
    ]
    if summary["errors"]:
        lines += ["| kind | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(summary["errors"].items())]
    else:
        lines.append("none.")
    lines += [
        "",
        "TTFT of streamed requests (ms), by when they started:",
        "",
        "| | requests | p50 | p90 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("outside_faults", "outside faults"), ("during_faults", "during faults")):
        t = ttft[name]
        lines.append(f"| {label} | {t['n']} | {t['p50']:.1f} | {t['p90']:.1f} | {t['p99']:.1f} |")
    loads = summary["engine_requests_mean"]
    lines += [
        "",
        "Requests at each engine (running and waiting, from its GetServerInfo), mean of the 5 s "
        "samples while it was up: "
        + ", ".join(
            f"engine {i}{' (slow)' if args.engine_flags[i] is SLOW else ''} {load:.1f}"
            for i, load in enumerate(loads)
        )
        + ".",
    ]
    mem = summary["memory_mb"]
    lines += [
        "",
        f"Gateway memory (process tree RSS, MB), sampled every 5 s: first {mem['first']:.0f}, "
        f"min {mem['min']:.0f}, max {mem['max']:.0f}, last {mem['last']:.0f}.",
        "",
        "| t (s) | RSS MB |",
        "|---|---|",
    ]
    step = max(1, len(run.memory) // 12)
    lines += [f"| {t:.0f} | {m:.0f} |" for t, m in run.memory[::step]]
    lines += [
        "",
        "## Reading it",
        "",
        "- *lost* must be 0: a request whose engine failed before any token reached the client is "
        "retried (with backoff, on another engine), and an unstreamed request is retried "
        "whenever its engine fails, since nothing was sent yet.",
        "- *cut* streams are those whose engine died after tokens went out: they end with an SSE "
        "`error` event and `data: [DONE]`. Their number follows from how many streams the killed "
        "engine was serving at the time.",
        "- TTFT's upper percentiles are the slow engine's queue, faults or not: round robin (the "
        "only policy so far; load-aware ones come with fleet routing) hands it a quarter of the "
        "requests, more than it can serve, so requests wait there (see the requests per engine "
        "above) while the other engines answer in tens of milliseconds. Compare during and "
        "outside faults at the same percentile to see what the faults cost.",
        "",
        "## Commands",
        "",
        "```sh",
        "./bench/chaos.sh                  # 10 minutes; rewrites docs/reliability.md",
        "./bench/chaos.sh --duration 120   # a short run",
        "```",
        "",
        SUITES,
    ]
    return "\n".join(lines)


# What the test suites check (part of the report, so the page says where each guarantee is held).
SUITES = """## Where each guarantee is tested

All in `make test`, with real processes on loopback; none asserts a duration.

| what | tests |
|---|---|
| engine crash mid-generation (retried when nothing reached the client; else an SSE error), \
hang before and after the first token (deadline, Abort), errors after output (retried, then \
502), circuit breaker cutting off a failing worker, a worker that comes back, a frozen engine \
(keepalive), GOAWAY mid-stream, RESOURCE_EXHAUSTED storms and full engines (429, never 503), \
connection resets, a slow engine | `tests/faults/test_engine_faults.py` |
| a real vLLM frozen (SIGSTOP) mid-stream, both transports | \
`tests/integration/test_vllm.py::test_a_frozen_engine_fails_the_stream_then_serves_again` |
| the gRPC client alone: deadlines, keepalive on stalled links and frozen engines, resets, \
GOAWAY, MAX_CONCURRENT_STREAMS, slow readers (bounded buffering), max message size, TLS/mTLS, \
refused streams | `tests/engines/test_transport_faults.py` (real grpcio servers, a fault proxy) |
| slow and hostile clients: slowloris (headers, body), pipelining floods, oversized URL, \
headers, body, JSON nesting, invalid UTF-8, `Expect: 100-continue`, resets, the connection cap, \
TLS, clients that stop reading | `tests/robustness/test_http_hostile.py`, `tests/http/` |
| 10,000 generated bodies per endpoint: no 5xx, memory and tasks flat | \
`tests/faults/test_fuzz.py` |
| admission: gateway-wide limit across processes, queue, 429s, clients leaving the queue or a \
running request (Abort) | `tests/faults/test_admission_e2e.py`, `tests/unit/test_admission.py` |
| supervisor: a frozen event loop replaced (watchdog), failed starts retried with backoff | \
`tests/faults/test_supervisor.py` |
| circuit breaker and backoff arithmetic | `tests/routing/test_circuit.py` |
| a requester leaving does not cancel shared image work | \
`tests/multimodal/test_decode_and_service.py` |
"""


async def main_async(args: argparse.Namespace) -> int:
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-chaos"
    out.mkdir(parents=True, exist_ok=True)
    engines = [Engine(i, flags, out) for i, flags in enumerate(args.engine_flags)]
    gateway: subprocess.Popen[bytes] | None = None
    try:
        for engine in engines:
            engine.start()
        port = _free_port()
        argv = [sys.executable, "-m", "herdsman", "serve", "--model-path", str(MODEL)]
        argv += ["--port", str(port), "--workers", str(args.processes)]
        argv += ["--health-check-interval", "1", "--log-level", "warning"]
        for engine in engines:
            argv += ["--worker", engine.url]
        gateway = _spawn(argv, out / "gateway.log")
        _wait_line(gateway, rb"herdsman listening", 120)
        workload = Workload(ROOT / "models/qwen3/tokenizer.json", seed=args.seed)
        client = ChaosClient(
            f"http://127.0.0.1:{port}", "qwen3", args.max_tokens, {"separate_reasoning": False}
        )
        run = Run()
        t0 = time.monotonic()
        chaos = asyncio.create_task(_chaos(engines, run, t0, args.duration, args.down))
        memory = asyncio.create_task(_sample(gateway.pid, engines, run, t0, args.duration))
        await _load(client, workload, run, t0, args.duration, args.concurrency)
        chaos.cancel()
        memory.cancel()
        await client.close()
        summary = summarize(run, args.duration)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        (out / "records.json").write_text(
            json.dumps([r.__dict__ for r in run.records], default=str)
        )
        report = render(summary, run, args, out)
        (out / "reliability.md").write_text(report)
        Path(args.docs).write_text(report)
        print(json.dumps(summary, indent=1))
        return 0 if summary["kinds"].get("lost", 0) == 0 else 1
    finally:
        if gateway is not None and gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(gateway.pid, signal.SIGKILL)
        for engine in engines:
            engine.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0)
    # Enough clients to keep every engine's 16 sequences busy, the slow one's share included.
    parser.add_argument("--concurrency", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--down", type=float, default=10.0, help="seconds a killed engine is down")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--invocation", default="./bench/chaos.sh")
    args = parser.parse_args(argv)
    args.engine_flags = [REALISTIC, REALISTIC, REALISTIC, SLOW]
    random.seed(args.seed)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
