"""The metrics registry (herdsman.observability.metrics): exposition, processes that die,
process metrics, engine gauges, and docs/metrics.md covering every metric.

Multiprocess mode is process-wide in prometheus-client, so those tests run their gateway
"processes" as real subprocesses (``_run``) and keep this one in single-process mode.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from herdsman.observability.gateway_metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "herdsman.json"

_PRELUDE = """
import os, sys
from herdsman.observability.gateway_metrics import GatewayMetrics
m = GatewayMetrics()
m.registry.share_through(sys.argv[1])
"""


def _run(directory: Path, code: str, *, prelude: str = _PRELUDE) -> str:
    script = prelude + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


_SCRAPE = "print(m.registry.render(), end='')"


def _requests(text: str) -> float:
    return _samples(text).get(
        ("herdsman_requests_total", (("endpoint", "x"), ("status", "200"))), 0
    )


def _itl_count(text: str) -> float:
    return _samples(text).get(("herdsman_inter_token_latency_seconds_count", ()), 0)


def test_label_values_are_escaped() -> None:
    m = GatewayMetrics()
    model = 'qwen "3"\\8b\nnew line'
    m.kv_index_blocks.set(7, (model,))
    m.requests.inc(labels=('/v1/"odd"\\path\n', "200"))
    text = m.registry.render()
    assert 'model="qwen \\"3\\"\\\\8b\\nnew line"' in text
    samples = _samples(text)  # and a Prometheus parser reads the original values back
    assert samples[("herdsman_kv_index_blocks", (("model", model),))] == 7
    key = ("herdsman_requests_total", (("endpoint", '/v1/"odd"\\path\n'), ("status", "200")))
    assert samples[key] == 1
    assert all("\n" not in line or line.startswith("#") for line in text.splitlines())


def test_a_dead_process_counts_once_and_its_files_go(tmp_path: Path) -> None:
    dead = """
    m.requests.inc(3, labels=("x", "200"))
    m.itl.observe(0.01); m.itl.observe(0.02)
    m.in_flight.set(5)
    m.registry.write_snapshot()
    print(os.getpid())
    """
    first = int(_run(tmp_path, dead))
    assert {p.name for p in tmp_path.iterdir()} >= {
        f"counter_{first}.db",
        f"gauge_livesum_{first}.db",
        f"{first}.msgpack",
    }

    # The first fold crashes after replacing the counter archive, before deleting any file.
    crash = """
    import pathlib, sys
    from herdsman.observability.gateway_metrics import GatewayMetrics
    def crash(self, missing_ok=False):
        if self.exists():
            raise SystemExit(0)
    pathlib.Path.unlink = crash
    GatewayMetrics().registry.share_through(sys.argv[1])
    """
    _run(tmp_path, crash, prelude="")
    assert (tmp_path / "counter_archive.db").exists()
    assert (tmp_path / f"counter_{first}.db").exists()

    for _ in range(2):  # counted once, scrape after scrape
        text = _run(tmp_path, _SCRAPE)
        assert (_requests(text), _itl_count(text)) == (3, 2)
    assert _samples(text)[("herdsman_in_flight_requests", ())] == 0  # its gauges went with it
    assert not [p for p in tmp_path.iterdir() if str(first) in p.name]  # pruned

    # The process restarted (another pid): its counts add to the dead one's.
    restarted = """
    m.requests.inc(labels=("x", "200"))
    m.itl.observe(0.5)
    m.registry.write_snapshot()
    """
    _run(tmp_path, restarted)
    text = _run(tmp_path, _SCRAPE)
    assert (_requests(text), _itl_count(text)) == (4, 3)
    assert len(list(tmp_path.glob("*.msgpack"))) == 1  # the archive; nothing accumulates


def test_a_process_reusing_a_dead_pid_does_not_double_count(tmp_path: Path) -> None:
    # What a dead process with our pid would have left: fold it before opening our own files.
    code = """
    import shutil
    from pathlib import Path
    d = Path(sys.argv[1])
    m.requests.inc(2, labels=("x", "200"))
    m.registry.write_snapshot()
    pid = os.getpid()
    for p in list(d.iterdir()):  # pretend they were left by an earlier process with our pid
        if str(pid) in p.name:
            shutil.copy(p, d / p.name.replace(str(pid), "stale"))
    print(pid)
    """
    pid = int(_run(tmp_path, code))
    for p in list(tmp_path.iterdir()):
        if str(pid) in p.name:
            p.unlink()
    reuse = """
    import os, sys
    from pathlib import Path
    from herdsman.observability.gateway_metrics import GatewayMetrics
    d = Path(sys.argv[1])
    for p in list(d.iterdir()):
        if "stale" in p.name:
            p.rename(d / p.name.replace("stale", str(os.getpid())))
    m2 = GatewayMetrics()
    m2.registry.share_through(d)
    m2.requests.inc(labels=("x", "200"))
    print(m2.registry.render(), end="")
    """
    assert _requests(_run(tmp_path, reuse, prelude="")) == 3


def test_process_metrics_are_per_pid(tmp_path: Path) -> None:
    code = """
    import subprocess
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\\n"
        "from herdsman.observability.gateway_metrics import GatewayMetrics\\n"
        "m = GatewayMetrics(); m.registry.share_through(sys.argv[1])\\n"
        "m.registry.write_snapshot()\\n"
        "print('ok', flush=True); time.sleep(30)"
    ), sys.argv[1]], stdout=subprocess.PIPE, text=True)
    other.stdout.readline()
    print(os.getpid(), other.pid)
    print(m.registry.render(), end="")
    other.kill()
    """
    out = _run(tmp_path, code)
    pids, text = out.split("\n", 1)
    samples = _samples(text)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert {dict(k[1]).get("pid") for k in samples if k[0] == name} == set(pids.split())
    assert any(k[0] == "python_gc_collections_total" for k in samples)


def test_engine_load_gauges() -> None:
    m = GatewayMetrics()
    load = types.SimpleNamespace(
        running=3, waiting=2, token_usage=0.25, cache_hit_rate=None, updated_at=1.0
    )
    workers = [
        types.SimpleNamespace(url="grpc://a:1", dp_rank=None, model_name="m", load=load),
        types.SimpleNamespace(
            url="grpc://b:1",
            dp_rank=1,
            model_name="m",
            load=types.SimpleNamespace(**{**vars(load), "cache_hit_rate": 0.5}),
        ),
        types.SimpleNamespace(  # nothing reported yet: no series
            url="grpc://c:1", dp_rank=None, model_name="m", load=types.SimpleNamespace(updated_at=0)
        ),
    ]
    m.watch_workers(lambda: workers)
    samples = _samples(m.registry.render())
    a = (("dp_rank", ""), ("model", "m"), ("worker", "grpc://a:1"))
    b = (("dp_rank", "1"), ("model", "m"), ("worker", "grpc://b:1"))
    assert samples[("herdsman_worker_running_requests", a)] == 3
    assert samples[("herdsman_worker_waiting_requests", b)] == 2
    assert samples[("herdsman_worker_kv_usage_ratio", a)] == 0.25
    assert samples[("herdsman_worker_cache_hit_rate", b)] == 0.5
    assert ("herdsman_worker_cache_hit_rate", a) not in samples  # not reported
    assert not [k for k in samples if ("worker", "grpc://c:1") in k[1]]
    # A record without the hit rate (the KV-event stream's non-heartbeat ones) keeps the last.
    workers[1].load.cache_hit_rate = None
    assert _samples(m.registry.render())[("herdsman_worker_cache_hit_rate", b)] == 0.5


def _every_metric() -> str:
    """A render with every metric of the gateway holding a value."""
    m = GatewayMetrics()
    lru = types.SimpleNamespace(hits=1, misses=2, evictions=0, size=10)
    cache = types.SimpleNamespace(
        l0=_Sized(lru), l1=_Sized(lru), shared=types.SimpleNamespace(hits=1, misses=1, rotations=0)
    )
    m.watch_tokenizer_cache(cache)  # type: ignore[arg-type]
    load = types.SimpleNamespace(
        running=1, waiting=0, token_usage=0.1, cache_hit_rate=0.2, updated_at=1.0
    )
    worker = types.SimpleNamespace(url="grpc://a:1", dp_rank=None, model_name="m", load=load)
    m.watch_workers(lambda: [worker])
    for attr, metric in vars(m).items():
        if attr == "registry":
            continue
        labels = tuple("x" for _ in metric.label_names)
        if hasattr(metric, "observe"):
            metric.observe(0.1, labels)
        else:
            metric.inc(1, labels)
    return m.registry.render()


class _Sized:
    def __init__(self, lru: types.SimpleNamespace) -> None:
        self.__dict__.update(vars(lru))

    def __len__(self) -> int:
        return 3


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables."""
    return set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", DOC.read_text(), re.MULTILINE))


def exposed_metrics(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def test_every_metric_is_documented() -> None:
    exposed = exposed_metrics(_every_metric())
    assert len(exposed) > 30
    missing = exposed - documented_metrics()
    assert not missing, f"on /metrics but not in docs/metrics.md: {sorted(missing)}"


def test_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len(panels) >= 12
    assert len({p["id"] for p in panels}) == len(panels)
    documented = documented_metrics()
    for panel in panels:
        assert panel["title"] and panel["type"] in {"timeseries", "stat", "gauge", "table"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            names = set(re.findall(r"\b((?:herdsman|process|python)_[a-z0-9_]+)", expr))
            assert names, expr
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in documented or base in documented, (panel["title"], name)
    assert "herdsman" in {v["name"] for v in dashboard["templating"]["list"]} or any(
        v["type"] == "datasource" for v in dashboard["templating"]["list"]
    )


def test_load_records_carry_the_cache_hit_rate() -> None:
    from smg_grpc_proto.generated import common_pb2

    from herdsman.engines.grpc_engine import _scheduler_load
    from herdsman.routing.kv_events import event_load

    record = common_pb2.EngineLoad(running_requests=2, token_usage=0.5, cache_hit_rate=0.25)
    assert event_load(record, 10.0).cache_hit_rate == 0.25
    assert event_load(common_pb2.EngineLoad(running_requests=2), 10.0).cache_hit_rate is None
    polled = types.SimpleNamespace(
        num_running_reqs=1,
        num_waiting_reqs=0,
        num_waiting_uncached_tokens=0,
        token_usage=0.1,
        max_running_requests=8,
        cache_hit_rate=0.75,
    )
    assert _scheduler_load(polled, 1.0).cache_hit_rate == 0.75
