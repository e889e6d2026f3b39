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
from tests.conftest import QWEN3, fork_servers, gateway_processes, start_gateway
from tests.faults.common import sim, wait_for

pytestmark = pytest.mark.slow


def _pid(base: str) -> int | None:
    """The pid of the process that answers a fresh connection, None if none answers soon."""
    with contextlib.suppress(httpx.HTTPError), httpx.Client() as client:
        return int(client.get(f"{base}/health", timeout=2).json()["pid"])
    return None


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
        gone = not os.path.exists(f"/proc/{frozen}")
        assert gone or frozen not in gateway_processes(gw.process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)
        gw.stop()
        engine.stop()


def test_replacements_and_spares_that_fail_to_start_are_retried(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(QWEN3, model)
    engine, _ = sim(tmp_path, "engine")
    extra = ("--model-path", str(model), "--workers", "1", "--warm-spare")
    gw = start_gateway(engine.address, extra=extra)
    base = f"http://{gw.address}"
    try:
        first = _pid(base)
        assert first is not None
        spare = gateway_processes(gw.process.pid) - {first}
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


def test_processes_of_a_dead_fork_server_are_replaced_not_left_running(tmp_path: Path) -> None:
    engine, _ = sim(tmp_path, "engine")
    gw = start_gateway(engine.address, extra=("--model-path", str(QWEN3), "--workers", "2"))
    base = f"http://{gw.address}"
    try:
        old = gateway_processes(gw.process.pid)
        assert len(old) == 2
        (server,) = fork_servers(gw.process.pid)
        os.kill(server, signal.SIGKILL)
        # Its processes are stopped (nobody would watch them) and new ones forked by a new
        # fork server take their slots.
        assert wait_for(lambda: all(not os.path.exists(f"/proc/{p}") for p in old), timeout=60)
        assert wait_for(lambda: len(gateway_processes(gw.process.pid) - old) == 2, timeout=120)
        assert wait_for(lambda: _pid(base) not in (None, *old), timeout=60)
        body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200
        assert gw.process.poll() is None
    finally:
        gw.stop()
        engine.stop()
