"""--prefill-stalls-decode: an engine without chunked prefill, whose prefills hold up decoding.

The scheduler is stepped on a synthetic clock (`SimEngine._step(now)`), so the assertions are
on when the sim itself emitted each token, not on wall-clock timing. One process-level check
reads the sim's own counters (--stats-file) after a real stream was interrupted by a prefill.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.cli import add_arguments
from herdsman.sim.engine import SimEngine
from herdsman.sim.model_card import load_model_card
from herdsman.sim.options import SimOptions
from herdsman.sim.sim_request import GenerationParams, SimRequest
from herdsman.sim.text_source import TextSource

from .simproc import QWEN3, SimFactory, generate_request, split_responses

ITL = 0.010  # 10 ms per decode step, whatever the batch
PREFILL_PER_1K = 0.100  # 100 ms per 1000 prompt tokens


def _engine(tokenizer: Tokenizer, stalls: bool) -> SimEngine:
    options = SimOptions(
        model_path=QWEN3,
        ttft_base_ms=0.0,
        prefill_ms_per_1k=PREFILL_PER_1K * 1000,
        itl_base_ms=ITL * 1000,
        itl_per_running_ms=0.0,
        cache_blocks=0,
        serial_prefill=True,
        prefill_stalls_decode=stalls,
    )
    card = load_model_card(QWEN3, tokenizer)
    return SimEngine(options, card, TextSource(tokenizer), AbortLog(None))


def _params(request_id: str, prompt_len: int, max_tokens: int, first: int) -> GenerationParams:
    return GenerationParams(
        request_id=request_id,
        prompt_ids=[first + i for i in range(prompt_len)],
        max_tokens=max_tokens,
        min_tokens=0,
        stop_token_ids=frozenset(),
        ignore_eos=True,
        n=1,
        stream=True,
        logprobs=None,
        seed=None,
    )


def _run(
    engine: SimEngine, arrivals: list[tuple[float, GenerationParams]], end: float
) -> dict[str, list[float]]:
    """Step the scheduler on a synthetic clock, submitting each request at its arrival time;
    returns, per request id, the clock time at which each of its tokens was produced."""
    pending = sorted(arrivals, key=lambda a: a[0])
    requests: dict[str, SimRequest] = {}
    times: dict[str, list[float]] = {}
    now = 0.0
    deadline: float | None = 0.0
    while now <= end:
        while pending and pending[0][0] <= now:
            params = pending.pop(0)[1]
            requests[params.request_id] = engine.submit(params)
            times[params.request_id] = []
        deadline = engine._step(now)
        for request_id, request in requests.items():
            produced = len(request.sequences[0].output)
            times[request_id] += [now] * (produced - len(times[request_id]))
        candidates = [t for t in (deadline, pending[0][0] if pending else None) if t is not None]
        if not candidates:
            break
        now = min(candidates)
    return times


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _scenario(tokenizer: Tokenizer, stalls: bool) -> tuple[SimEngine, dict[str, list[float]]]:
    """A decodes alone (a 100-token prompt: 10 ms of prefill, then 40 tokens); at 105 ms two
    1000-token prompts arrive (100 ms of prefill each, back to back)."""
    engine = _engine(tokenizer, stalls)
    arrivals = [
        (0.0, _params("a", 100, 40, 1000)),
        (0.105, _params("b", 1000, 5, 20000)),
        (0.105, _params("c", 1000, 5, 40000)),
    ]
    return engine, _run(engine, arrivals, end=2.0)


def test_decode_waits_for_the_prefills(qwen_tokenizer: Tokenizer) -> None:
    engine, times = _scenario(qwen_tokenizer, stalls=True)
    a, b, c = times["a"], times["b"], times["c"]
    assert len(a) == 40 and len(b) == 5 and len(c) == 5
    # Prefills are serial, as with --serial-prefill: B's ends at 205 ms, C's after it at 305 ms.
    assert b[0] == pytest.approx(0.205)
    assert c[0] == pytest.approx(0.305)
    # A had produced 10 tokens (one per 10 ms from its first at 10 ms) when the prefills began;
    # its 11th, due at 110 ms, waits for both of them, then takes its own step.
    assert a[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert a[10] == pytest.approx(0.305 + ITL)
    assert not any(0.105 < t < 0.305 for t in a)
    # Its gap: 5 ms until the prefills began, their 200 ms, then its own step.
    assert max(_gaps(a)) == pytest.approx(0.005 + 2 * 0.100 + ITL)
    # Every other gap is one step.
    assert sorted(_gaps(a))[-2] == pytest.approx(ITL)
    # The sim's own account: one step held, pushed back from 110 ms to 315 ms.
    assert engine.decode_stalls == 1
    assert engine.decode_stall_s == pytest.approx(0.315 - 0.110)
    # B and C decode with A, in the same steps once the prefills are done.
    assert b[1] == a[10] and c[1] == a[10]


def test_without_the_option_decode_steps_run_through_prefills(qwen_tokenizer: Tokenizer) -> None:
    engine, times = _scenario(qwen_tokenizer, stalls=False)
    a, b, c = times["a"], times["b"], times["c"]
    # The same serial prefills, same TTFTs...
    assert b[0] == pytest.approx(0.205)
    assert c[0] == pytest.approx(0.305)
    # ...but A keeps its 10 ms steps throughout: 30 tokens by the time C's prefill is done.
    assert max(_gaps(a)) == pytest.approx(ITL)
    assert sum(1 for t in a if t <= 0.305 + 1e-9) == 30
    assert engine.decode_stalls == 0 and engine.decode_stall_s == 0.0


def test_cli_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model-path", str(QWEN3)]
    assert not SimOptions.from_namespace(parser.parse_args(base)).prefill_stalls_decode
    options = SimOptions.from_namespace(parser.parse_args([*base, "--prefill-stalls-decode"]))
    assert options.prefill_stalls_decode
    # Off, the option changes nothing else.
    default = SimOptions.from_namespace(parser.parse_args(base))
    assert dataclasses.replace(options, prefill_stalls_decode=False) == default


def _stats_after(path: Path, sequence: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            stats = None
        if stats is not None and stats["sequence"] > sequence:
            return dict(stats)
        time.sleep(0.02)
    raise AssertionError(f"no stats write past sequence {sequence}")


def test_a_real_stream_is_held_by_a_prefill(sim_factory: SimFactory, tmp_path: Path) -> None:
    """Over gRPC: a prompt arriving mid-stream holds the stream's decode steps, as the sim's
    own counters (--stats-file) show."""
    path = tmp_path / "stats.json"
    sim = sim_factory(
        "--ttft-base-ms", "1", "--itl-base-ms", "2", "--itl-per-running-ms", "0",
        "--prefill-ms-per-1k", "100", "--prefill-stalls-decode", "--cache-blocks", "0",
        "--stats-file", str(path),
    )  # fmt: skip
    stub = sim.stub()
    long = generate_request("vllm", "long", [7] * 16, max_tokens=4000, ignore_eos=True)
    stream = stub.Generate(long, timeout=60)
    next(stream)  # the long stream is decoding
    # 4000 tokens take at least 8 s of steps; this 4000-token prompt (400 ms of prefill, some
    # 200 steps' worth) lands well inside them.
    short = generate_request("vllm", "short", [9] * 4000, max_tokens=2, ignore_eos=True)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.extend(stub.Generate(short, timeout=60)))
    worker.start()
    worker.join(60)
    _, completes = split_responses(done)
    assert completes and not worker.is_alive()
    stream.cancel()

    sim.process.send_signal(signal.SIGUSR1)
    [rank] = _stats_after(path, 0)["ranks"]
    assert rank["decode_stalls"] >= 1
    assert rank["decode_stall_ms"] > 0
    assert rank["decode_steps"] >= 1
