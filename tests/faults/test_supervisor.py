"""The supervisor keeps the gateway's processes alive: a process whose event loop stops answering
is replaced (watchdog), and replacements or spares that fail to start are retried with backoff,
never counted as serving."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from tests.conftest import QWEN3, start_gateway
from tests.faults.common import sim, wait_for

pytestmark = pytest.mark.slow


def _pid(base: str) -> int | None:
    """The pid of the process that answers a fresh connection, None if none answers soon."""
    with contextlib.suppress(httpx.HTTPError), httpx.Client() as client:
        return int(client.get(f"{base}/health", timeout=2).json()["pid"])
    return None


def _children(pid: int) -> set[int]:
    """The supervisor's gateway processes (not multiprocessing's resource tracker)."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(p) for p in f.read().split())
    return {p for p in found if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()}


def test_a_process_whose_loop_freezes_is_replaced(tmp_path: Path) -> None:
    engine, _ = sim(tmp_path, "engine")
    gw = start_gateway(
        engine.address,
        extra=(
            "--model-path",
            str(QWEN3),
            "--workers",
            "1",
            "--no-warm-spare",
            "--watchdog-timeout",
            "2",
        ),
    )
    base = f"http://{gw.address}"
    frozen = _pid(base)
    assert frozen is not None
    try:
        os.kill(frozen, signal.SIGSTOP)  # alive, socket open, event loop answering nothing
        assert wait_for(lambda: _pid(base) not in (None, frozen), timeout=90)
        assert not os.path.exists(f"/proc/{frozen}") or frozen not in _children(gw.process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)
        gw.stop()
        engine.stop()


def test_replacements_and_spares_that_fail_to_start_are_retried(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(QWEN3, model)
    engine, _ = sim(tmp_path, "engine")
    gw = start_gateway(engine.address, extra=("--model-path", str(model), "--workers", "1"))
    base = f"http://{gw.address}"
    try:
        first = _pid(base)
        assert first is not None
        spare = _children(gw.process.pid) - {first}
        assert len(spare) == 1
        # From now on no new process can load the model: replacements die while starting.
        hidden = tmp_path / "hidden"
        model.rename(hidden)
        os.kill(first, signal.SIGKILL)
        # The warm spare takes the slot at once; the new spare behind it keeps failing.
        assert wait_for(lambda: _pid(base) == next(iter(spare)), timeout=60)
        second = next(iter(spare))
        os.kill(second, signal.SIGKILL)
        # No warm spare left and no process can start: nobody serves...
        assert wait_for(lambda: _pid(base) is None, timeout=60)
        # ...until the model is back; the supervisor has kept retrying, with backoff.
        hidden.rename(model)
        assert wait_for(lambda: _pid(base) not in (None, first, second), timeout=120)
        assert gw.process.poll() is None
    finally:
        gw.stop()
        engine.stop()
