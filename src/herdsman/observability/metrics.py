"""The gateway's metrics: prometheus-client in multiprocess mode, plus one in-process histogram.

Everything a request records once (requests, TTFT, e2e, stages, tokens, failures, gauges) is a
prometheus-client metric. With several gateway processes (``share_through``) they run in
prometheus-client's multiprocess mode: each value is an entry of an mmap'd file per process, and
the process answering ``GET /metrics`` merges every file (``MultiProcessCollector.merge``).

The per-token histogram (inter-token latency) stays in this module's own ``Histogram``: a list
increment, ~10x cheaper than an mmap'd value under prometheus-client's lock (bench/metrics_cost.py,
docs/metrics.md). Each process writes it, with its process and GC metrics, to a snapshot file once
a second; the answering process merges them with its live values.

A process that died stays counted exactly once: under a lock, the first scrape after its death
folds its counter and histogram files into ``counter_archive.db`` / ``histogram_archive.db``
(and its snapshot into ``own_archive.msgpack``), each archive listing the pids it holds, then
deletes its files; its gauges and process metrics go (``mark_process_dead``). A new process folds
whatever an earlier process with its pid left before it opens its own files.

The exposition is prometheus-client's ``generate_latest`` (label values escaped there).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import prometheus_client
from prometheus_client import values as prom_values
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.gc_collector import GCCollector
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

from herdsman.pids import pid_alive

Labels = tuple[str, ...]

# `_created` samples are not part of herdsman's exposition (and not meaningful summed over
# processes).
prometheus_client.disable_created_metrics()

_FOLDED = "herdsman_archive_folded"  # the archive entries that list the pids folded in
_PROM_TYPES = ("counter", "histogram")
_PROM_FILE = re.compile(r"^(counter|histogram|gauge_[a-z]+)_(\d+)\.db$")
_OWN_FILE = re.compile(r"^(\d+)\.msgpack$")
_OWN_ARCHIVE = "own_archive.msgpack"
_PROCESS = "__process__"  # the snapshot's section of process and GC metrics


# -- this module's own, in-process metrics (the per-token histogram) -------------------------------
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


def _family(metric: Metric) -> Family:
    """One of this module's metrics as prometheus-client's metric family."""
    if isinstance(metric, Histogram):
        family = HistogramMetricFamily(metric.name, metric.help, labels=metric.label_names)
        for labels, counts in sorted(metric.counts.items()):
            running, buckets = 0, []
            for bound, count in zip((*metric.buckets, float("inf")), counts, strict=True):
                running += count
                buckets.append((prometheus_client.utils.floatToGoString(bound), running))
            family.add_metric(list(labels), buckets, metric.sums[labels])
        return family
    base = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
    family = Family(base, metric.help, metric.kind)
    sample = base + "_total" if metric.kind == "counter" else base
    for labels, value in sorted(metric.values.items()):
        family.add_sample(sample, dict(zip(metric.label_names, labels, strict=False)), value)
    return family


# -- prometheus-client metrics behind the facade the gateway calls ---------------------------------
class _PromMetric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), **options: Any) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._options = options
        self._build()

    def _build(self) -> None:
        cls = {
            "counter": prometheus_client.Counter,
            "gauge": prometheus_client.Gauge,
            "histogram": prometheus_client.Histogram,
        }[self.kind]
        self.metric: Any = cls(
            self.name, self.help, self.label_names, registry=None, **self._options
        )
        self._children: dict[Labels, Any] = {}

    def _child(self, labels: Labels) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self.metric.labels(*labels) if self.label_names else self.metric
            self._children[labels] = child
        return child

    def _rebuild(self) -> None:
        """The same metric on the value class in use now (multiprocess mode), values kept."""
        old = list(self._children.items())
        self._build()
        for labels, child in old:
            self._carry(child, self._child(labels))

    def _carry(self, old: Any, new: Any) -> None:
        new._value.inc(old._value.get())


class PromCounter(_PromMetric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self._totals: dict[Labels, float] = {}
        super().__init__(name, help, labels)

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self._child(labels).inc(amount)

    def set_total(self, total: float, labels: Labels = ()) -> None:
        """Follow a count kept elsewhere (adds what it grew by since the last call)."""
        grown = total - self._totals.get(labels, 0.0)
        self._totals[labels] = total
        if grown > 0:
            self._child(labels).inc(grown)


class PromGauge(_PromMetric):
    """A gauge; over processes its values add up (``livesum``: a dead process's go)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels, multiprocess_mode="livesum")

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self._child(labels).dec(amount)

    def set(self, value: float, labels: Labels = ()) -> None:
        self._child(labels).set(value)

    def _carry(self, old: Any, new: Any) -> None:
        new._value.set(old._value.get())


class PromHistogram(_PromMetric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.buckets = tuple(buckets)
        super().__init__(name, help, labels, buckets=buckets)

    def observe(self, value: float, labels: Labels = ()) -> None:
        self._child(labels).observe(value)

    def _carry(self, old: Any, new: Any) -> None:
        new._sum.inc(old._sum.get())
        for into, count in zip(new._buckets, old._buckets, strict=True):
            into.inc(count.get())


PromMetric = PromCounter | PromGauge | PromHistogram


# -- process and GC metrics, per process --------------------------------------------------------
_PROCESS_COLLECTORS = [
    ProcessCollector(registry=prometheus_client.CollectorRegistry(auto_describe=False)),
    GCCollector(registry=prometheus_client.CollectorRegistry(auto_describe=False)),
]


def _process_samples() -> list[Any]:
    """This process's process and GC metrics, as a snapshot holds them."""
    out = []
    for collector in _PROCESS_COLLECTORS:
        for family in collector.collect():
            samples = [[s.name, s.labels, s.value] for s in family.samples]
            out.append([family.name, family.type, family.documentation, samples])
    return out


def _process_families(by_pid: dict[int, list[Any]]) -> list[Family]:
    """Every live process's process and GC metrics, labelled by pid."""
    families: dict[str, Family] = {}
    for pid, section in sorted(by_pid.items()):
        for name, typ, help, samples in section:
            family = families.get(name)
            if family is None:
                family = families[name] = Family(name, help, typ)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, {**labels, "pid": str(pid)}, value)
    return list(families.values())


class _Families:
    """What ``generate_latest`` renders: a fixed list of metric families."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Family]:
        return iter(self._families)


# -- the registry ----------------------------------------------------------------------------------
class MetricsRegistry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []  # this module's own (the per-token histogram)
        self.prom: list[PromMetric] = []  # prometheus-client's
        self.collectors: list[Callable[[], None]] = []  # refresh values kept elsewhere
        # Families read at scrape time from the answering process alone (state every process
        # knows the same way, e.g. what engines report about their load).
        self.scrape_collectors: list[Callable[[], Iterable[Family]]] = []
        self._directory: Path | None = None

    def _collect(self) -> None:
        for collect in self.collectors:
            collect()

    def add(self, metric: Any) -> Any:
        if isinstance(metric, _PromMetric):
            self.prom.append(metric)  # type: ignore[arg-type]
        else:
            self.metrics.append(metric)
        return metric

    # -- sharing between processes -------------------------------------------------------------
    def share_through(self, directory: str | Path) -> None:
        """Share this process's values through ``directory`` from now on (multiprocess mode)."""
        self._directory = Path(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self._directory)
        with self._locked():
            # Whatever an earlier process with this pid left is a dead process's: fold it first.
            self._fold_dead(own_too=True)
        prom_values.ValueClass = prom_values.MultiProcessValue()
        for metric in self.prom:
            metric._rebuild()

    def _own_file(self) -> Path | None:
        return self._directory / f"{os.getpid()}.msgpack" if self._directory else None

    def _snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {m.name: m.snapshot() for m in self.metrics}
        data[_PROCESS] = _process_samples()
        return data

    def write_snapshot(self) -> None:
        path = self._own_file()
        if path is None:
            return
        self._collect()
        data = msgspec.msgpack.encode(self._snapshot())
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def run_snapshots(self, interval: float = 1.0) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.write_snapshot()
            await asyncio.sleep(interval)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._directory is not None
        fd = os.open(self._directory / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _fold_dead(self, *, own_too: bool = False) -> None:
        """Fold the files of dead processes into the archives and delete them (under the lock).

        Each archive is replaced atomically and lists the pids it holds, so a crash before the
        files go cannot count them twice (files of listed pids are not read)."""
        d = self._directory
        assert d is not None
        own = os.getpid()
        pids = set()
        for name in os.listdir(d):
            match = _PROM_FILE.match(name) or _OWN_FILE.match(name)
            if match:
                pids.add(int(match.groups()[-1]))
        dead = {p for p in pids if (p == own and own_too) or (p != own and not pid_alive(p))}
        if not dead:
            return
        for typ in _PROM_TYPES:
            archive = d / f"{typ}_archive.db"
            folded = _folded_pids(archive)
            fresh = {p for p in dead if p not in folded and (d / f"{typ}_{p}.db").exists()}
            sources = [d / f"{typ}_{p}.db" for p in fresh]
            if fresh:  # 1. the archive holds their values and lists them (one atomic replace)
                _write_prom_archive(archive, sources, folded | fresh)
            for path in sources + [d / f"{typ}_{p}.db" for p in dead]:  # 2. their files go
                path.unlink(missing_ok=True)
            listed = folded | fresh
            if listed:  # 3. pids whose files are gone need not be listed (a pid is reused)
                _write_prom_archive(
                    archive, [], {p for p in listed if (d / f"{typ}_{p}.db").exists()}
                )
        for pid in dead:
            mark_process_dead(pid, str(d))  # the live gauges' files
            for path in glob.glob(str(d / f"gauge_*_{pid}.db")):
                os.unlink(path)
        self._fold_own(dead)

    def _fold_own(self, dead: set[int]) -> None:
        d = self._directory
        assert d is not None
        archive = d / _OWN_ARCHIVE
        held = _read_own_archive(archive)
        folded = set(held["folded"])
        fresh = {p for p in dead if p not in folded and (d / f"{p}.msgpack").exists()}
        merged: dict[str, Any] = held["m"]
        if fresh:
            snaps = []
            for pid in fresh:
                with contextlib.suppress(OSError, msgspec.DecodeError, ValueError):
                    snaps.append(msgspec.msgpack.decode((d / f"{pid}.msgpack").read_bytes()))
            merged = {}
            for metric in self.metrics:
                base = [held["m"][metric.name]] if metric.name in held["m"] else []
                parts = base + [s[metric.name] for s in snaps if metric.name in s]
                empty = type(metric)(metric.name, metric.help, *_shape(metric))
                merged[metric.name] = _merge(empty, parts, live=True).snapshot()
            _write_own_archive(archive, merged, folded | fresh)
        for pid in dead | fresh:
            (d / f"{pid}.msgpack").unlink(missing_ok=True)
        listed = folded | fresh
        if listed:
            _write_own_archive(
                archive, merged, {p for p in listed if (d / f"{p}.msgpack").exists()}
            )

    # -- exposition ------------------------------------------------------------------------------
    def families(self) -> list[Family]:
        """Every process's values, merged, as prometheus-client metric families."""
        self._collect()
        d = self._directory
        own_live = self._snapshot()
        process: dict[int, list[Any]] = {os.getpid(): own_live.pop(_PROCESS)}
        if d is None:
            prom = [f for m in self.prom for f in m.metric.collect()]
            own = [_family(m) for m in self.metrics]
        else:
            with self._locked():
                self._fold_dead()
                prom = self._prom_families(d)
                own, process = self._own_families(d, process)
        families = prom + own
        for collect in self.scrape_collectors:
            families.extend(collect())
        families.extend(_process_families(process))
        return families

    def _prom_families(self, d: Path) -> list[Family]:
        skip: set[str] = set()
        for typ in _PROM_TYPES:
            skip |= {f"{typ}_{p}.db" for p in _folded_pids(d / f"{typ}_archive.db")}
        files = [
            str(d / name)
            for name in os.listdir(d)
            if name.endswith(".db") and name not in skip and not name.startswith(".")
        ]
        return [f for f in MultiProcessCollector.merge(files) if f.name != _FOLDED]

    def _own_families(
        self, d: Path, process: dict[int, list[Any]]
    ) -> tuple[list[Family], dict[int, list[Any]]]:
        held = _read_own_archive(d / _OWN_ARCHIVE)
        folded, own = set(held["folded"]), os.getpid()
        live: list[dict[str, Any]] = []
        for name in os.listdir(d):
            match = _OWN_FILE.match(name)
            if not match or int(match.group(1)) in (own, *folded):
                continue
            with contextlib.suppress(OSError, msgspec.DecodeError, ValueError):
                snap = msgspec.msgpack.decode((d / name).read_bytes())
                live.append(snap)
                process[int(match.group(1))] = snap.get(_PROCESS, [])
        families = []
        for metric in self.metrics:
            parts = [s[metric.name] for s in live if metric.name in s]
            merged = _merge(metric, parts, live=True)
            if metric.name in held["m"]:
                merged = _merge(merged, [held["m"][metric.name]], live=False)
            families.append(_family(merged))
        return families, process

    def render(self) -> str:
        """Prometheus text exposition of every process's values, merged."""
        return prometheus_client.generate_latest(_Families(self.families())).decode()  # type: ignore[arg-type]


def _shape(metric: Metric) -> tuple[Any, ...]:
    if isinstance(metric, Histogram):
        return (metric.buckets, metric.label_names)
    return (metric.label_names,)


def _write_prom_archive(archive: Path, sources: list[Path], folded: set[int]) -> None:
    """Replace ``archive`` by its values plus those of ``sources``, listing ``folded``."""
    totals: dict[str, float] = {}
    for path in [archive, *sources] if archive.exists() else sources:
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if not key.startswith(f'["{_FOLDED}"'):
                totals[key] = totals.get(key, 0.0) + value
    tmp = archive.parent / f".{archive.stem}.tmp"
    tmp.unlink(missing_ok=True)
    out = MmapedDict(str(tmp))
    for key, value in totals.items():
        out.write_value(key, value, 0.0)
    for pid in folded:
        out.write_value(_folded_key(pid), 1.0, 0.0)
    out.close()
    os.replace(tmp, archive)


def _write_own_archive(archive: Path, merged: dict[str, Any], folded: set[int]) -> None:
    tmp = archive.parent / f".{archive.stem}.tmp"
    tmp.write_bytes(msgspec.msgpack.encode({"folded": sorted(folded), "m": merged}))
    os.replace(tmp, archive)


def _folded_key(pid: int) -> str:
    return mmap_key(_FOLDED, _FOLDED, ["pid"], [str(pid)], "")


def _folded_pids(archive: Path) -> set[int]:
    if not archive.exists():
        return set()
    out = set()
    for key, _value, _ts, _pos in MmapedDict.read_all_values_from_file(str(archive)):
        if key.startswith(f'["{_FOLDED}"'):
            out.add(int(msgspec.json.decode(key)[2]["pid"]))
    return out


def _read_own_archive(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, msgspec.DecodeError, ValueError):
        return msgspec.msgpack.decode(path.read_bytes())  # type: ignore[no-any-return]
    return {"folded": [], "m": {}}
