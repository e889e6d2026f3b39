"""Real processes on real sockets: engine-sim and gateway started as subprocesses."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.sim.simproc import FAST_TIMING
from tests.storage_servers import start_postgres, start_redis

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
QWEN3 = MODELS / "qwen3"
LLAMA3 = MODELS / "llama3"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs `async def` tests on a fresh event loop (no pytest-asyncio here)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


# `make test` runs the suite on two xdist workers (--dist loadfile), each taking the next unit
# as it finishes one. A unit is a file, except the real-engine tier: one unit, so that its vLLM
# servers (4-5 GB each, a minute or two to start) run one module at a time as in a serial run
# rather than two modules' at once. The long units go first, so none starts last and runs alone.
_REAL_ENGINES = "tests/integration/"
_FIRST = (_REAL_ENGINES, "tests/faults/", "tests/fleet/")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndRealEngines(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(_REAL_ENGINES):
                return _REAL_ENGINES
            return super()._split_scope(nodeid)

    return FilesAndRealEngines(config, log)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixture parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, p in enumerate(_FIRST) if item.nodeid.startswith(p)), len(_FIRST))

    items.sort(key=rank)  # stable: the order within each group is kept


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    address: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_line(
    process: subprocess.Popen[bytes], pattern: re.Pattern[bytes], timeout: float
) -> re.Match[bytes]:
    """The first line of ``process``'s stdout matching ``pattern``, within ``timeout`` seconds.

    Reads the pipe without blocking past the deadline (a process that prints nothing more and
    does not exit must not hang the suite); the process is killed if the line never comes.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if match := pattern.search(line):
                return match
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            raise RuntimeError(
                f"{process.args!r:.200} printed no {pattern.pattern!r} in {timeout}s"
            )
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(
                f"{process.args!r:.200} exited with {process.wait()} before it was ready"
            )
        buffer += chunk


def _start(argv: list[str], ready: re.Pattern[bytes], timeout: float = 60.0) -> Proc:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    match = wait_for_line(process, ready, timeout)
    return Proc(process, f"{match.group(1).decode()}:{match.group(2).decode()}")


_SIM_READY = re.compile(rb"engine-sim listening on (\S+):(\d+)")
_GATEWAY_READY = re.compile(rb"herdsman listening on https?://(\S+):(\d+)")


def fork_servers(supervisor: int) -> set[int]:
    """The supervisor's fork server (a set: empty before it starts, or with --start-method
    spawn)."""
    found: set[int] = set()
    for child in _children(supervisor):
        try:
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:  # gone meanwhile
            continue
    return found


def gateway_processes(supervisor: int) -> set[int]:
    """The supervisor's gateway processes: the children of its fork server (not the fork server
    itself, nor multiprocessing's resource tracker)."""
    found: set[int] = set()
    for server in fork_servers(supervisor):
        found |= _children(server)
    return found


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
    except OSError:
        pass
    return found


def start_sim(model: Path = QWEN3, backend: str = "vllm", *extra: str) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "herdsman.sim",
        "--model-path",
        str(model),
        "--port",
        "0",
        "--backend",
        backend,
        *extra,
    ]
    return _start(argv, _SIM_READY)


def start_gateway(*workers: str, extra: tuple[str, ...] = ()) -> Proc:
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--log-level", "warning"]
    for worker in workers:
        argv += ["--worker", f"grpc://{worker}"]
    return _start([*argv, *extra], _GATEWAY_READY)


class _Shared:
    """The session's shared engine-sims and gateways, by what they are started for.

    The fixtures below are parametrized per session (backend, transport), and pytest tears such a
    fixture down whenever the next test wants another parameter. That is once per parameter in
    a serial run, but under xdist (``make test`` runs files on two workers) each worker switches
    parameters at every file, and would start the same processes again each time. Kept here
    instead, each is started once per worker and stopped when the session ends."""

    def __init__(self) -> None:
        self._procs: dict[tuple[str, ...], Proc] = {}

    def get(self, key: tuple[str, ...], start: Callable[[], Proc]) -> Proc:
        proc = self._procs.get(key)
        if proc is None:
            proc = self._procs[key] = start()
        return proc

    def stop(self) -> None:
        for proc in reversed(self._procs.values()):  # gateways before the sims they use
            proc.stop()
        self._procs.clear()


@pytest.fixture(scope="session")
def _shared() -> Iterator[_Shared]:
    shared = _Shared()
    yield shared
    shared.stop()


@pytest.fixture(scope="session", params=["vllm", "sglang"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def sim(backend: str, _shared: _Shared) -> Proc:
    """A fast engine-sim (small timings) for the given protocol."""
    return _shared.get(("sim", backend), lambda: start_sim(QWEN3, backend, *FAST_TIMING))


@pytest.fixture(scope="session", params=["native", "grpcio"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def gateway(sim: Proc, transport: str, _shared: _Shared) -> Proc:
    """A gateway in front of ``sim`` with the tokenizer fetched from the worker."""
    return _shared.get(
        ("gateway", sim.address, transport),
        lambda: start_gateway(sim.address, extra=("--grpc-transport", transport)),
    )


@pytest.fixture(scope="session")
def base_url(gateway: Proc) -> str:
    return f"http://{gateway.address}"


# Real storage servers for the session, started on first need (tests/storage_servers.py).
@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session (user postgres, database postgres)."""
    url, stop = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield url
    stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session (database 0)."""
    url, stop = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop()
