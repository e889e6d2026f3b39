from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.faultproxy import FaultProxy
from tests.sim.simproc import QWEN3, SimFactory, SimProcess, start_sim


@pytest.fixture(params=["native", "grpcio"])
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[SimFactory]:
    """Start engine-sims with custom flags; each is resumed (if a test froze it) and stopped."""
    started: list[SimProcess] = []

    def factory(*flags: str, backend: str = "vllm", model: Path = QWEN3) -> SimProcess:
        sim = start_sim(*flags, backend=backend, model=model, abort_log=tmp_path / "aborts.log")
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        if sim.process.poll() is None:
            os.kill(sim.process.pid, signal.SIGCONT)
        sim.stop()


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    """Fault proxies to close at teardown: append what you start."""
    started: list[FaultProxy] = []
    yield started
    for proxy in started:
        proxy.close()
