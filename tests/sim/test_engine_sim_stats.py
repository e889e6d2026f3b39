"""--stats-file: cumulative counters on SIGUSR1 and at exit (what the routing benchmark reads)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from .simproc import FAST_TIMING, SimFactory, generate_request, split_responses


def _read_after(path: Path, sequence: int, timeout: float = 30.0) -> dict[str, Any]:
    """The file once its sequence has passed `sequence` (a generous deadline: a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            stats = None  # not written yet, or caught mid-write
        if stats is not None and stats["sequence"] > sequence:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"no stats write past sequence {sequence}")


def test_counters_on_signal_and_at_exit(sim_factory: SimFactory, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    sim = sim_factory(
        *FAST_TIMING, "--stats-file", str(path), "--block-size", "4", "--dp-size", "2"
    )
    sim.process.send_signal(signal.SIGUSR1)
    empty = _read_after(path, 0)
    assert [r["requests"] for r in empty["ranks"]] == [0, 0]
    assert empty["kv_subscribers"] == 0

    prompt = list(range(100, 121))  # 21 tokens: 5 full blocks of 4
    for i, rank in enumerate((0, 0, 1)):
        request = generate_request(
            "vllm", f"r{i}", prompt, max_tokens=3, data_parallel_rank=rank, ignore_eos=True
        )
        split_responses(list(sim.stub().Generate(request, timeout=10)))

    sim.process.send_signal(signal.SIGUSR1)
    stats = _read_after(path, empty["sequence"])
    first, second = stats["ranks"]
    assert (first["requests"], second["requests"]) == (2, 1)
    assert first["prompt_tokens"] == 2 * len(prompt)
    # The repeat on rank 0 found the whole prompt but its last token (recomputed for its logits).
    assert first["cached_tokens"] == 20
    assert second["cached_tokens"] == 0
    assert first["generated_tokens"] == 6

    sim.stop()
    final = json.loads(path.read_text())
    assert final["sequence"] > stats["sequence"]
    assert [r["requests"] for r in final["ranks"]] == [2, 1]


def test_no_kv_events_reports_no_subscriber_count(sim_factory: SimFactory, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    sim = sim_factory(*FAST_TIMING, "--stats-file", str(path), "--no-kv-events")
    sim.process.send_signal(signal.SIGUSR1)
    assert _read_after(path, 0)["kv_subscribers"] is None


def test_timing_log_has_each_calls_arrival_and_first_write(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    path = tmp_path / "timing.log"
    # 30 ms before the first token: the first write comes at least that long after arrival.
    sim = sim_factory(
        "--ttft-base-ms", "30", "--prefill-ms-per-1k", "0", "--itl-base-ms", "1",
        "--block-size", "4", "--timing-log", str(path),
    )  # fmt: skip
    prompt = list(range(100, 113))
    before = time.time_ns()
    for i in range(2):
        request = generate_request("vllm", f"t{i}", prompt, max_tokens=3, ignore_eos=True)
        split_responses(list(sim.stub().Generate(request, timeout=10)))
    after = time.time_ns()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        arrived, first, prompt_tokens, _cached = (int(field) for field in line.split())
        assert before <= arrived < first <= after
        assert first - arrived >= 30_000_000
        assert prompt_tokens == len(prompt)
    assert int(lines[0].split()[3]) == 0  # the repeat found the first's prefix cached
    assert int(lines[1].split()[3]) > 0
