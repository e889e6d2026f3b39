"""The closed-loop load runner shared by the HTTP client (load.py) and the gRPC floor.

C slot tasks each walk conversations turn by turn, one request in flight per slot; their starts
are staggered over the first seconds. A short warm-up runs first; then CPU counters of the
gateway tree, the engine tree, this client and the whole machine are read, the measured window
runs until its duration or request count is reached, the counters are read again, and every
slot is cancelled. Requests are attributed to the phase in which they complete. Every loop is
bounded by both time and count, and each request by a timeout, so the run ends by itself even
if a target stops answering.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import procstat
from bench.workload import Turn, Workload

DEFAULT_TOKENIZER = Path(__file__).resolve().parent.parent / "models/qwen3/tokenizer.json"
ERROR_SAMPLES = 5
ERROR_BACKOFF_S = 0.05
RAMP_S = 2.0


@dataclass(slots=True)
class Outcome:
    """What one request produced, as seen by the client."""

    ok: bool = True
    error: str = ""
    # Seconds from sending the request to the first output token.
    ttft: float = math.nan
    # Seconds between successive output chunks.
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    reasoning_chunks: int = 0
    prompt_tokens_reported: int = -1

    def fail(self, message: str) -> Outcome:
        self.ok = False
        self.error = self.error or message
        return self


class Driver(Protocol):
    kind: str
    needs_ids: bool

    async def request(self, slot: int, turn: Turn) -> Outcome: ...

    async def close(self) -> None: ...


@dataclass
class LoadConfig:
    label: str
    concurrency: int
    duration: float
    max_requests: int
    warmup: float
    warmup_requests: int
    request_timeout: float
    max_tokens: int
    seed: int
    conversation_offset: int
    gateway_pid: int | None
    engine_pid: int | None
    rss_interval: float
    tokenizer: str


class Window:
    """Statistics of the requests that completed within one phase."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.completed = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.ttfts = array("d")
        self.gaps = array("d")
        self.tokens = 0
        self.chunks = 0
        self.reasoning_chunks = 0
        self.prompt_tokens: list[int] = []
        self.prompt_mismatches = 0

    def add(self, turn: Turn, outcome: Outcome) -> None:
        if outcome.ok and outcome.tokens != self.max_tokens:
            outcome.fail(f"expected {self.max_tokens} output tokens, got {outcome.tokens}")
        if not outcome.ok:
            self.errors += 1
            if len(self.error_samples) < ERROR_SAMPLES:
                self.error_samples.append(outcome.error[:300])
            return
        self.completed += 1
        self.ttfts.append(outcome.ttft)
        self.gaps.extend(outcome.gaps)
        self.tokens += outcome.tokens
        self.chunks += outcome.chunks
        self.reasoning_chunks += outcome.reasoning_chunks
        self.prompt_tokens.append(turn.prompt_tokens)
        reported = outcome.prompt_tokens_reported
        if reported >= 0 and reported != turn.prompt_tokens:
            self.prompt_mismatches += 1


def percentiles(values: array | list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        # Nearest-rank percentile: a value that was actually observed.
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * scale, 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "mean": round(sum(ordered) / n * scale, 3),
        "max": round(ordered[-1] * scale, 3),
    }


@dataclass
class Snapshot:
    at: float
    gateway_cpu_ms: float
    gateway_kernel_ms: float
    engine_cpu_ms: float
    client_cpu_ms: float
    machine_busy: int
    machine_total: int


def _snapshot(config: LoadConfig) -> Snapshot:
    busy, total = procstat.machine_cpu()
    return Snapshot(
        at=time.perf_counter(),
        gateway_cpu_ms=procstat.tree_cpu_ms(config.gateway_pid) if config.gateway_pid else 0.0,
        gateway_kernel_ms=(
            procstat.tree_kernel_ms(config.gateway_pid) if config.gateway_pid else 0.0
        ),
        engine_cpu_ms=procstat.tree_cpu_ms(config.engine_pid) if config.engine_pid else 0.0,
        # process_time covers every thread of this process (gRPC's included).
        client_cpu_ms=time.process_time() * 1000.0,
        machine_busy=busy,
        machine_total=total,
    )


def _rss(pid: int | None) -> dict[str, Any] | None:
    if not pid:
        return None
    processes = procstat.tree_rss(pid)
    smaps = [procstat.smaps_kb(int(p["pid"])) for p in processes]
    for process, memory in zip(processes, smaps, strict=True):
        process["pss_kb"] = memory[1] if memory else 0
        process["uss_kb"] = memory[2] if memory else 0
    return {
        "total_kb": sum(int(p["rss_kb"]) for p in processes),
        "pss_kb": sum(int(p["pss_kb"]) for p in processes),
        "uss_kb": sum(int(p["uss_kb"]) for p in processes),
        "processes": processes,
    }


async def run_load(
    config: LoadConfig,
    driver: Driver,
    workload: Workload,
    on_window: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Warm up, then measure one window. ``on_window("start")`` and ``on_window("end")`` are
    awaited at the window's edges, beside the CPU counters (the routing benchmark reads its
    engines' counters there)."""
    warm = Window(config.max_tokens)
    measured = Window(config.max_tokens)
    current = warm
    warm_done = asyncio.Event()
    measured_done = asyncio.Event()
    stop = asyncio.Event()
    conversations = itertools.count(config.conversation_offset)
    ramp = min(config.warmup, RAMP_S)
    in_flight = 0

    async def slot_loop(slot: int) -> None:
        nonlocal in_flight
        # Staggered starts: slots that all begin at once finish in waves of C requests, which
        # a short window would see as a step function in completions.
        await asyncio.sleep(ramp * slot / config.concurrency)
        while not stop.is_set():
            k = next(conversations)
            for turn in workload.conversation(k, with_ids=driver.needs_ids):
                if stop.is_set():
                    return
                in_flight += 1
                try:
                    async with asyncio.timeout(config.request_timeout):
                        outcome = await driver.request(slot, turn)
                except TimeoutError:
                    outcome = Outcome().fail(f"timeout after {config.request_timeout:.0f}s")
                except Exception as exc:
                    outcome = Outcome().fail(f"{type(exc).__name__}: {exc}")
                finally:
                    in_flight -= 1
                window = current
                window.add(turn, outcome)
                if window is warm and warm.completed + warm.errors >= config.warmup_requests:
                    warm_done.set()
                if window is measured and measured.completed + measured.errors >= (
                    config.max_requests
                ):
                    measured_done.set()
                if not outcome.ok:
                    # A dead target must not turn this loop into a busy spin.
                    await asyncio.sleep(ERROR_BACKOFF_S)

    rss_samples: list[list[float]] = []

    async def sample_rss(started: float) -> None:
        while True:
            await asyncio.sleep(config.rss_interval)
            sample = _rss(config.gateway_pid)
            if sample is not None:
                rss_samples.append(
                    [
                        round(time.perf_counter() - started, 1),
                        sample["total_kb"] / 1024,
                        sample["pss_kb"] / 1024,
                        sample["uss_kb"] / 1024,
                    ]
                )

    memory: dict[str, Any] = {"rss_before_warmup": _rss(config.gateway_pid)}
    run_started = time.perf_counter()
    tasks = [asyncio.create_task(slot_loop(i)) for i in range(config.concurrency)]
    sampler: asyncio.Task[None] | None = None
    try:
        if config.warmup > 0 and config.warmup_requests > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(warm_done.wait(), config.warmup)
        if on_window is not None:
            await on_window("start")
        before = _snapshot(config)
        memory["rss_start"] = _rss(config.gateway_pid)
        current = measured
        if config.gateway_pid and config.rss_interval > 0:
            sampler = asyncio.create_task(sample_rss(before.at))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(measured_done.wait(), config.duration)
        after = _snapshot(config)
        if on_window is not None:
            await on_window("end")
        memory["rss_end"] = _rss(config.gateway_pid)
        memory["rss_samples_mb"] = rss_samples
        abandoned = in_flight
    finally:
        stop.set()
        if sampler is not None:
            sampler.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)
        await driver.close()
    memory["run_s"] = round(time.perf_counter() - run_started, 3)
    return _result(config, driver, warm, measured, before, after, abandoned, memory)


def _result(
    config: LoadConfig,
    driver: Driver,
    warm: Window,
    measured: Window,
    before: Snapshot,
    after: Snapshot,
    abandoned: int,
    memory: dict[str, Any],
) -> dict[str, Any]:
    elapsed = after.at - before.at
    done = measured.completed

    def per_request(ms: float) -> float | None:
        return round(ms / done, 3) if done else None

    gateway_ms = after.gateway_cpu_ms - before.gateway_cpu_ms
    gateway_kernel_ms = after.gateway_kernel_ms - before.gateway_kernel_ms
    engine_ms = after.engine_cpu_ms - before.engine_cpu_ms
    client_ms = after.client_cpu_ms - before.client_cpu_ms
    machine_total = after.machine_total - before.machine_total
    prompts = measured.prompt_tokens
    return {
        "label": config.label,
        "kind": driver.kind,
        "concurrency": config.concurrency,
        "window_s": round(elapsed, 3),
        "completed": done,
        "errors": measured.errors,
        "error_samples": measured.error_samples,
        "req_per_s": round(done / elapsed, 3),
        "out_tok_per_s": round(measured.tokens / elapsed, 1),
        "ttft_ms": percentiles(measured.ttfts),
        "itl_ms": percentiles(measured.gaps),
        "tokens_per_request": round(measured.tokens / done, 2) if done else None,
        "chunks_per_request": round(measured.chunks / done, 2) if done else None,
        "reasoning_chunks": measured.reasoning_chunks,
        "prompt_tokens": {
            "mean": round(sum(prompts) / len(prompts), 1) if prompts else None,
            "min": min(prompts, default=None),
            "max": max(prompts, default=None),
            "server_mismatches": measured.prompt_mismatches,
        },
        "abandoned_in_flight": abandoned,
        "run_s": memory["run_s"],
        "warmup": {
            "completed": warm.completed,
            "errors": warm.errors,
            "error_samples": warm.error_samples,
        },
        "gateway": {
            "pid": config.gateway_pid,
            "cpu_ms": round(gateway_ms, 1),
            "cpu_ms_per_req": per_request(gateway_ms) if config.gateway_pid else None,
            "cpu_cores": round(gateway_ms / 1000 / elapsed, 3) if config.gateway_pid else None,
            "kernel_ms_per_req": per_request(gateway_kernel_ms) if config.gateway_pid else None,
            "rss_before_warmup": memory["rss_before_warmup"],
            "rss_start": memory["rss_start"],
            "rss_end": memory["rss_end"],
            "rss_samples_mb": memory["rss_samples_mb"],
        },
        "engine": {
            "pid": config.engine_pid,
            "cpu_ms_per_req": per_request(engine_ms) if config.engine_pid else None,
            "cpu_cores": round(engine_ms / 1000 / elapsed, 3) if config.engine_pid else None,
        },
        "client": {
            "cpu_ms_per_req": per_request(client_ms),
            "cpu_cores": round(client_ms / 1000 / elapsed, 3),
        },
        "machine": {
            "cpus": os.cpu_count(),
            # Fraction of all CPUs busy during the window (everything on the machine).
            "busy": round((after.machine_busy - before.machine_busy) / machine_total, 3)
            if machine_total
            else None,
        },
        "settings": {
            "duration_s": config.duration,
            "max_requests": config.max_requests,
            "warmup_s": config.warmup,
            "warmup_requests": config.warmup_requests,
            "max_tokens": config.max_tokens,
            "seed": config.seed,
            "conversation_offset": config.conversation_offset,
        },
        "argv": sys.argv,
    }


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", default="", help="name of this run in the results")
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="measured window, seconds")
    parser.add_argument(
        "--max-requests", type=int, default=100_000, help="ends the window early when reached"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured warm-up, seconds")
    parser.add_argument("--warmup-requests", type=int, default=10_000)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conversation-offset",
        type=int,
        default=0,
        help="first conversation index; runs with different offsets send different chats",
    )
    parser.add_argument("--gateway-pid", type=int, default=None, help="root of the gateway tree")
    parser.add_argument("--engine-pid", type=int, default=None, help="root of the engine tree")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="0 disables sampling")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--json-out", default=None, help="also write the JSON result here")


def config_from(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        label=args.label,
        concurrency=args.concurrency,
        duration=args.duration,
        max_requests=args.max_requests,
        warmup=args.warmup,
        warmup_requests=args.warmup_requests,
        request_timeout=args.request_timeout,
        max_tokens=args.max_tokens,
        seed=args.seed,
        conversation_offset=args.conversation_offset,
        gateway_pid=args.gateway_pid,
        engine_pid=args.engine_pid,
        rss_interval=args.rss_interval,
        tokenizer=args.tokenizer,
    )


def human_line(result: dict[str, Any]) -> str:
    def ms(stats: dict[str, float | None], key: str) -> str:
        value = stats[key]
        return "-" if value is None else f"{value:.1f}"

    gw = result["gateway"]["cpu_ms_per_req"]
    return (
        f"{result['label'] or result['kind']} c={result['concurrency']}: "
        f"{result['completed']} req in {result['window_s']:.1f}s = "
        f"{result['req_per_s']:.1f} req/s, "
        f"{result['out_tok_per_s']:.0f} tok/s, "
        f"TTFT p50/p99 {ms(result['ttft_ms'], 'p50')}/{ms(result['ttft_ms'], 'p99')} ms, "
        f"ITL p50/p99 {ms(result['itl_ms'], 'p50')}/{ms(result['itl_ms'], 'p99')} ms, "
        f"errors {result['errors']}, "
        f"gateway {'-' if gw is None else f'{gw:.1f}'} CPU ms/req, "
        f"engine {result['engine']['cpu_cores'] or 0:.2f} cores, "
        f"client {result['client']['cpu_cores']:.2f} cores, "
        f"machine busy {result['machine']['busy']:.0%}"
    )


def main_with(
    args: argparse.Namespace, make_driver: Callable[[LoadConfig], Driver]
) -> dict[str, Any]:
    """Build the workload (before any timing starts), run, print and save the result."""
    config = config_from(args)
    workload = Workload(config.tokenizer, config.seed)

    async def go() -> dict[str, Any]:
        # Drivers may bind to the running loop (grpc.aio does), so build them inside it.
        return await run_load(config, make_driver(config), workload)

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(go())
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    print(human_line(result), file=sys.stderr)
    for sample in result["error_samples"]:
        print(f"  error: {sample}", file=sys.stderr)
    return result
