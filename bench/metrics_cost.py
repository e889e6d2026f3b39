"""What a metric observation costs: herdsman's own registry vs prometheus-client (issue 18).

    .venv/bin/python -m bench.metrics_cost            # ~30 s, prints a Markdown table
    .venv/bin/python -m bench.metrics_cost --json     # the same numbers as JSON

Each backend runs in a fresh interpreter (prometheus-client picks its value class from
PROMETHEUS_MULTIPROC_DIR when it is imported), with the gateway's own buckets:

- ``own``: ``herdsman.observability.metrics`` (a list increment; a snapshot file once a second).
- ``prom-mp``: prometheus-client in multiprocess mode (every value an mmap'd file entry, written
  on each increment under one process-wide lock).
- ``prom``: prometheus-client in single-process mode (a mutex per value), for reference.
- ``facade-mp``: what the gateway runs now (``herdsman.observability.GatewayMetrics`` after
  ``share_through``): prometheus-client multiprocess for the per-request metrics, labelled
  children cached, the own histogram for ITL; its scrape includes process and GC metrics.

Measured per operation (best of several rounds of 200k calls, ns): the per-token histogram
observation (ITL, no labels), a counter increment with two labels, a histogram observation with a
label, and the ~10 operations one request makes (in-flight +1/-1, TTFT, e2e, 3 stage
observations, prompt and generation tokens, the request counter). And what one scrape costs with
4 processes' values on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 5)
_STAGE = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1)
# Inter-token latencies spread over the buckets (the bucket search is part of the cost).
_VALUES = [0.0004, 0.003, 0.012, 0.018, 0.021, 0.035, 0.06, 0.2, 0.9, 7.0]
ROUNDS, CALLS = 5, 200_000
PROCESSES = 4  # for the scrape


def _best_ns(fn: Callable[[int], None], calls: int = CALLS) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter_ns()
        fn(calls)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def _loop_overhead() -> float:
    values = _VALUES

    def run(n: int) -> None:
        for i in range(n):
            values[i % 10]

    return _best_ns(run)


class _Own:
    """The hot-path calls against herdsman's registry."""

    def __init__(self) -> None:
        from herdsman.observability.metrics import Counter, Gauge, Histogram, MetricsRegistry

        r = self.registry = MetricsRegistry()
        self.requests = r.add(Counter("requests_total", "", ["endpoint", "status"]))
        self.in_flight = r.add(Gauge("in_flight", ""))
        self.ttft = r.add(Histogram("ttft_seconds", "", _LATENCY))
        self.e2e = r.add(Histogram("e2e_seconds", "", _LATENCY))
        self.itl = r.add(Histogram("itl_seconds", "", _ITL))
        self.stage = r.add(Histogram("stage_seconds", "", _STAGE, ["stage"]))
        self.prompt = r.add(Counter("prompt_tokens_total", ""))
        self.gen = r.add(Counter("generation_tokens_total", ""))

    def itl_observe(self, n: int) -> None:
        itl, values = self.itl, _VALUES
        for i in range(n):
            itl.observe(values[i % 10])

    def counter_labels(self, n: int) -> None:
        requests, labels = self.requests, ("/v1/chat/completions", "200")
        for _ in range(n):
            requests.inc(labels=labels)

    def histogram_label(self, n: int) -> None:
        stage, values, labels = self.stage, _VALUES, ("tokenize",)
        for i in range(n):
            stage.observe(values[i % 10], labels)

    def request(self, n: int) -> None:
        m, v = self, _VALUES
        for i in range(n):
            x = v[i % 10]
            m.in_flight.inc()
            m.stage.observe(x, ("template",))
            m.stage.observe(x, ("tokenize",))
            m.ttft.observe(x)
            m.stage.observe(x, ("engine",))
            m.in_flight.dec()
            m.e2e.observe(x)
            m.prompt.inc(2400)
            m.gen.inc(200)
            m.requests.inc(labels=("/v1/chat/completions", "200"))

    def scrape(self, directory: str) -> Callable[[int], None]:
        # PROCESSES-1 other processes' snapshot files (live: the benchmark's own pid is alive,
        # so they are written under the names of live pids we spawn and keep around).
        holders = [subprocess.Popen(["sleep", "60"]) for _ in range(PROCESSES - 1)]
        self._holders = holders
        self.registry.share_through(directory)
        self.request(1000)
        self.itl_observe(10_000)
        own = self.registry._own_file()
        assert own is not None
        self.registry.write_snapshot()
        data = own.read_bytes()
        for proc in holders:
            (own.parent / f"{proc.pid}.msgpack").write_bytes(data)

        def run(n: int) -> None:
            for _ in range(n):
                self.registry.render()

        return run

    def close(self) -> None:
        for proc in getattr(self, "_holders", []):
            proc.kill()
            proc.wait()


class _Prom:
    """The same calls against prometheus-client (multiprocess mode when the env var is set)."""

    def __init__(self) -> None:
        import prometheus_client as pc

        pc.disable_created_metrics()
        r = self.registry = pc.CollectorRegistry()
        self.requests = pc.Counter("requests", "", ["endpoint", "status"], registry=r)
        self.in_flight = pc.Gauge("in_flight", "", registry=r, multiprocess_mode="livesum")
        self.ttft = pc.Histogram("ttft_seconds", "", buckets=_LATENCY, registry=r)
        self.e2e = pc.Histogram("e2e_seconds", "", buckets=_LATENCY, registry=r)
        self.itl = pc.Histogram("itl_seconds", "", buckets=_ITL, registry=r)
        self.stage = pc.Histogram("stage_seconds", "", ["stage"], buckets=_STAGE, registry=r)
        self.prompt = pc.Counter("prompt_tokens", "", registry=r)
        self.gen = pc.Counter("generation_tokens", "", registry=r)

    def itl_observe(self, n: int) -> None:
        itl, values = self.itl, _VALUES
        for i in range(n):
            itl.observe(values[i % 10])

    def counter_labels(self, n: int) -> None:
        requests = self.requests
        for _ in range(n):
            requests.labels("/v1/chat/completions", "200").inc()

    def histogram_label(self, n: int) -> None:
        stage, values = self.stage, _VALUES
        for i in range(n):
            stage.labels("tokenize").observe(values[i % 10])

    def request(self, n: int) -> None:
        m, v = self, _VALUES
        for i in range(n):
            x = v[i % 10]
            m.in_flight.inc()
            m.stage.labels("template").observe(x)
            m.stage.labels("tokenize").observe(x)
            m.ttft.observe(x)
            m.stage.labels("engine").observe(x)
            m.in_flight.dec()
            m.e2e.observe(x)
            m.prompt.inc(2400)
            m.gen.inc(200)
            m.requests.labels("/v1/chat/completions", "200").inc()

    def scrape(self, directory: str) -> Callable[[int], None]:
        import shutil

        import prometheus_client as pc
        from prometheus_client import multiprocess

        self.request(1000)
        self.itl_observe(10_000)
        for name in os.listdir(directory):  # the other processes: copies of our files
            stem, ext = os.path.splitext(name)
            prefix, _pid = stem.rsplit("_", 1)
            for k in range(1, PROCESSES):
                shutil.copy(
                    os.path.join(directory, name), os.path.join(directory, f"{prefix}_{k}{ext}")
                )
        scrape = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(scrape, path=directory)

        def run(n: int) -> None:
            for _ in range(n):
                pc.generate_latest(scrape)

        return run

    def close(self) -> None:
        pass


class _Facade(_Own):
    """The gateway's own ``METRICS`` facade as shipped: prometheus-client multiprocess metrics
    (labelled children cached) for everything per request, the own histogram for ITL."""

    def __init__(self) -> None:
        from herdsman.observability.gateway_metrics import GatewayMetrics

        m = GatewayMetrics()
        m.registry.share_through(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        self.registry = m.registry
        self.requests, self.in_flight, self.ttft, self.e2e = m.requests, m.in_flight, m.ttft, m.e2e
        self.itl, self.stage = m.itl, m.stage
        self.prompt, self.gen = m.prompt_tokens, m.generation_tokens

    def scrape(self, directory: str) -> Callable[[int], None]:
        import shutil

        self.request(1000)
        self.itl_observe(10_000)
        self.registry.write_snapshot()
        holders = [subprocess.Popen(["sleep", "60"]) for _ in range(PROCESSES - 1)]
        self._holders = holders
        own = str(os.getpid())
        for name in os.listdir(directory):  # the other (live) processes: copies of our files
            if own in name:
                for proc in holders:
                    target = name.replace(own, str(proc.pid))
                    shutil.copy(os.path.join(directory, name), os.path.join(directory, target))

        def run(n: int) -> None:
            for _ in range(n):
                self.registry.render()

        return run


def _measure(backend: str) -> dict[str, Any]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp()
    m: Any = {"own": _Own, "facade-mp": _Facade}.get(backend, _Prom)()
    loop = _loop_overhead()
    out: dict[str, Any] = {"backend": backend}
    try:
        for name in ("itl_observe", "counter_labels", "histogram_label"):
            out[name] = round(_best_ns(getattr(m, name)) - loop, 1)
        out["request"] = round(_best_ns(m.request, CALLS // 10) - loop, 1)
        if backend != "prom":
            scrape = m.scrape(directory)
            out["scrape_us"] = round(_best_ns(scrape, 200) / 1000, 1)
    finally:
        m.close()
    return out


def _run_child(backend: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as directory:
        if backend in ("prom-mp", "facade-mp"):
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run(
            [sys.executable, "-m", "bench.metrics_cost", "--child", backend],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child)))
        return
    results = [_run_child(b) for b in ("own", "prom-mp", "prom", "facade-mp")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| backend | ITL observe (ns) | counter inc, 2 labels (ns) | histogram observe, 1 label "
        "(ns) | one request, 10 ops (ns) | scrape, 4 processes (µs) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['backend']} | {r['itl_observe']} | {r['counter_labels']} | "
            f"{r['histogram_label']} | {r['request']} | {r.get('scrape_us', '-')} |"
        )


if __name__ == "__main__":
    main()
