from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from .simproc import BACKENDS, FAST_TIMING, QWEN3, SimFactory, SimProcess, start_sim


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))


@pytest.fixture(scope="module", params=BACKENDS)
def fast_sim(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimProcess]:
    """One quick-timing sim per backend, shared by the tests of a module."""
    backend: str = request.param
    log = tmp_path_factory.mktemp(f"sim-{backend}") / "aborts.log"
    sim = start_sim(*FAST_TIMING, "--seed", "7", backend=backend, abort_log=log)
    yield sim
    sim.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    """Start sims with custom flags; every one is stopped at teardown."""
    started: list[SimProcess] = []

    def factory(*flags: str, backend: str = "vllm", model: Path = QWEN3) -> SimProcess:
        log = tmp_path / f"aborts-{len(started)}.log"
        sim = start_sim(*flags, backend=backend, model=model, abort_log=log)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()
