"""The engine's own TTFT in a run, from the engine-sim's ``--timing-log``.

A client's TTFT through a gateway is the gateway's work before the engine, the engine's (queueing
and prefill, which depend on how requests arrive together), and the gateway's work on the first
token. The engine-sim logs, per Generate call, when it arrived and when the handler first wrote
(wall clock, ns); the engine's TTFT is the difference. Beside the client's TTFT of the same run,
it tells the gateway's share from the engine's.

The window: the client's measured phase where it reports one in wall-clock ns (aiperf); else
the calls that arrived ``skip_s`` (the client's warm-up) after the first call of the load (the
call before it is the harness's probe of the gateway).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bench.runner import percentiles


def read(path: Path) -> list[tuple[int, int, int, int]]:
    """(arrival ns, first write ns, prompt tokens, cached tokens) per call that wrote."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        arrived, first, prompt, cached = line.split()
        if first != "-":
            rows.append((int(arrived), int(first), int(prompt), int(cached)))
    rows.sort()
    return rows


def summarize(
    path: Path, *, window_ns: tuple[int, int] | None = None, skip_s: float = 0.0
) -> dict[str, Any] | None:
    """The engine's TTFT (ms) over the window; None without a log or a call in it."""
    if not path.exists():
        return None
    rows = read(path)
    if window_ns is not None:
        start, end = window_ns
        window = [r for r in rows if start <= r[0] <= end]
    elif len(rows) > 1:
        start = rows[1][0] + int(skip_s * 1e9)
        window = [r for r in rows if r[0] >= start]
    else:
        window = []
    if not window:
        return None
    # Nearest-rank, as load.py's client TTFT beside it.
    ttft = percentiles([(first - arrived) / 1e6 for arrived, first, _, _ in window], scale=1.0)
    arrivals = [r[0] for r in window]
    # Calls that arrived within 5 ms of the one before: how bunched the gateway delivered them.
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(arrivals)]
    return {
        "requests": len(window),
        "ttft_p50_ms": ttft["p50"],
        "ttft_p99_ms": ttft["p99"],
        "ttft_mean_ms": ttft["mean"],
        "bunched_share": sum(g < 5.0 for g in gaps) / len(gaps) if gaps else 0.0,
        "cached_share": sum(r[3] for r in window) / max(1, sum(r[2] for r in window)),
    }
