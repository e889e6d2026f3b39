"""Cheap in-process metrics, shared between processes through snapshot files.

An observation is a list increment in the process that makes it: nothing on the per-token path
takes a lock or touches shared memory. Each process writes its values to a file once a second;
whichever process answers ``GET /metrics`` merges every file with its own live values. Counters
and histograms of processes that died stay counted (they are totals); their gauges do not.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from herdsman.pids import pid_alive

Labels = tuple[str, ...]


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def snapshot(self) -> dict[str, Any]:
        return {"v": [[list(k), v] for k, v in self.values.items()]}


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value

    def dec(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self.inc(-amount, labels)


class Histogram:
    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def snapshot(self) -> dict[str, Any]:
        return {"v": [[list(k), c, self.sums[k]] for k, c in self.counts.items()]}


Metric = Counter | Gauge | Histogram


def _merge(metric: Metric, snapshots: Iterable[dict[str, Any]], *, live: bool) -> Metric:
    """A copy of ``metric`` with the snapshot values of other processes added in."""
    if isinstance(metric, Histogram):
        merged_h = Histogram(metric.name, metric.help, metric.buckets, metric.label_names)
        for labels, counts in metric.counts.items():
            merged_h.counts[labels] = list(counts)
            merged_h.sums[labels] = metric.sums[labels]
        for snap in snapshots:
            for labels, counts, total in snap["v"]:
                key = tuple(labels)
                into = merged_h.counts.setdefault(key, [0] * len(counts))
                for i, c in enumerate(counts):
                    into[i] += c
                merged_h.sums[key] = merged_h.sums.get(key, 0.0) + total
        return merged_h
    merged = type(metric)(metric.name, metric.help, metric.label_names)
    merged.values = dict(metric.values)
    if metric.kind == "gauge" and not live:
        return merged
    for snap in snapshots:
        for labels, value in snap["v"]:
            key = tuple(labels)
            merged.values[key] = merged.values.get(key, 0.0) + value
    return merged


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _render(metric: Metric) -> list[str]:
    lines = [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
    if isinstance(metric, Histogram):
        for labels, counts in sorted(metric.counts.items()):
            running = 0
            for bound, count in zip((*metric.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                text = _label_text(metric.label_names, labels, f'le="{le}"')
                lines.append(f"{metric.name}_bucket{text} {running}")
            text = _label_text(metric.label_names, labels)
            lines.append(f"{metric.name}_sum{text} {metric.sums[labels]}")
            lines.append(f"{metric.name}_count{text} {running}")
    else:
        for labels, value in sorted(metric.values.items()):
            lines.append(f"{metric.name}{_label_text(metric.label_names, labels)} {value}")
    return lines


class MetricsRegistry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self.collectors: list[Callable[[], None]] = []  # refresh values kept elsewhere
        self._directory: Path | None = None

    def _collect(self) -> None:
        for collect in self.collectors:
            collect()

    def add(self, metric: Metric) -> Any:
        self.metrics.append(metric)
        return metric

    # -- sharing between processes -------------------------------------------------------------
    def share_through(self, directory: str | Path) -> None:
        self._directory = Path(directory)

    def _own_file(self) -> Path | None:
        return self._directory / f"{os.getpid()}.msgpack" if self._directory else None

    def write_snapshot(self) -> None:
        path = self._own_file()
        if path is None:
            return
        self._collect()
        data = msgspec.msgpack.encode({m.name: m.snapshot() for m in self.metrics})
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def run_snapshots(self, interval: float = 1.0) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.write_snapshot()
            await asyncio.sleep(interval)

    def _others(self) -> list[tuple[bool, dict[str, Any]]]:
        if self._directory is None:
            return []
        own = self._own_file()
        out = []
        for path in self._directory.glob("*.msgpack"):
            if path == own:
                continue
            with contextlib.suppress(OSError, msgspec.DecodeError, ValueError):
                out.append((pid_alive(int(path.stem)), msgspec.msgpack.decode(path.read_bytes())))
        return out

    def render(self) -> str:
        """Prometheus text exposition of every process's values, merged."""
        self._collect()
        others = self._others()
        lines: list[str] = []
        for metric in self.metrics:
            live = [snap[metric.name] for alive, snap in others if alive and metric.name in snap]
            dead = [
                snap[metric.name] for alive, snap in others if not alive and metric.name in snap
            ]
            merged = _merge(_merge(metric, live, live=True), dead, live=False)
            lines.extend(_render(merged))
        return "\n".join(lines) + "\n"
