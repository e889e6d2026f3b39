"""A client that leaves while its inputs are being embedded: the engine is told to stop every one
of them, and the gateway keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import Proc, start_gateway, start_sim
from tests.faults.common import engine_active, log_lines, wait_for

from herdsman.pipeline.pooling import MAX_CONCURRENT_INPUTS

from .conftest import EMBED, FAST


def ids_in(log: Path) -> set[str]:
    return {line.split()[1] for line in log_lines(log)}


@pytest.fixture(scope="module")
def hanging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc, Path]]:
    log = tmp_path_factory.mktemp("hang") / "aborts.log"
    sim = start_sim(EMBED, "vllm", *FAST, "--pooling", "embed", "--hang", "--abort-log", str(log))
    gateway = start_gateway(sim.address, extra=("--workers", "1", "--no-warm-spare"))
    yield sim, gateway, log
    gateway.stop()
    sim.stop()


def test_a_client_gone_mid_batch_aborts_every_input_sent(
    hanging: tuple[Proc, Proc, Path],
) -> None:
    """40 inputs: 32 go to the engine at once (the bound), the rest wait for a slot; the client
    leaves, the 32 are aborted and the 8 never sent."""
    sim, gateway, log = hanging
    host, port = gateway.address.rsplit(":", 1)
    body = json.dumps({"input": [f"text {i}" for i in range(40)]}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(head + body)
        assert wait_for(lambda: engine_active(sim) == MAX_CONCURRENT_INPUTS)
    # The client is gone: each call in flight is cancelled and aborted at the engine.
    assert wait_for(lambda: engine_active(sim) == 0)
    assert wait_for(lambda: len(ids_in(log)) == MAX_CONCURRENT_INPUTS)
    health = httpx.get(f"http://{gateway.address}/health", timeout=10)
    assert health.status_code == 200
