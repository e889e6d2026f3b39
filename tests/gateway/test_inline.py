"""``--start-method inline``: the gateway serves in the supervisor's own process.

One process, no children: it serves streams and the admin API's fleet changes over the same
control channel as a child would, drains what is in flight on SIGTERM and exits 0; options that
need more than one process are refused before anything starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from tests.conftest import QWEN3, _children, start_sim
from tests.faults.common import wait_for
from tests.fleet.test_fleet import answer, gateway, sim

pytestmark = pytest.mark.slow


def test_one_process_serves_and_changes_its_fleet() -> None:
    first, second = sim("first"), sim("second")
    gw = gateway(f"grpc://{first.address}", flags=("--start-method", "inline"))
    base = f"http://{gw.address}"
    try:
        # The supervisor itself answers, and has started no process.
        assert httpx.get(f"{base}/health", timeout=10).json()["pid"] == gw.process.pid
        assert _children(gw.process.pid) == set()
        assert answer(base, "qwen3") == "first"

        added = httpx.post(f"{base}/workers", json={"url": f"grpc://{second.address}"}, timeout=60)
        assert added.status_code == 200, added.text
        [second_id] = added.json()["ids"]
        first_id = next(
            w["id"]
            for w in httpx.get(f"{base}/workers", timeout=10).json()["workers"]
            if w["url"].endswith(first.address)
        )
        removed = httpx.delete(f"{base}/workers/{first_id}", timeout=60)
        assert removed.status_code == 200, removed.text
        # Applied before the call returned.
        assert httpx.get(f"{base}/workers/{first_id}", timeout=10).status_code == 404
        assert {answer(base, "qwen3") for _ in range(4)} == {"second"}
        assert httpx.get(f"{base}/workers/{second_id}", timeout=10).json()["healthy"] is True
    finally:
        gw.stop()
        first.stop()
        second.stop()


def test_sigterm_drains_the_stream_in_flight_and_exits_0() -> None:
    engine = start_sim(QWEN3, "vllm", "--itl-base-ms", "20")
    gw = gateway(f"grpc://{engine.address}", flags=("--start-method", "inline"))
    base = f"http://{gw.address}"
    lines: list[str] = []
    streaming = threading.Event()

    def stream() -> None:
        body = {
            "model": "qwen3",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                streaming.set()

    try:
        reader = threading.Thread(target=stream)
        reader.start()
        assert streaming.wait(30)
        gw.process.send_signal(signal.SIGTERM)  # ~2 s of the stream still to come
        reader.join(60)
        payloads = [line.removeprefix("data: ") for line in lines if line]
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["usage"]["completion_tokens"] == 100
        assert gw.process.wait(60) == 0
    finally:
        gw.stop()
        engine.stop()


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (("--workers", "2"), b"--workers 1"),
        (("--warm-spare",), b"no warm spare"),
    ],
)
def test_options_that_need_more_processes_are_refused(
    flags: tuple[str, ...], refusal: bytes
) -> None:
    argv = [sys.executable, "-m", "herdsman", "serve", "--worker", "grpc://127.0.0.1:9"]
    done = subprocess.run(
        [*argv, "--start-method", "inline", *flags], capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert refusal in done.stderr


def test_the_health_of_a_worker_reaches_the_inline_gateway() -> None:
    engine = sim("only")
    gw = gateway(f"grpc://{engine.address}", flags=("--start-method", "inline"))
    base = f"http://{gw.address}"
    try:
        assert answer(base, "qwen3") == "only"
        engine.stop()  # the supervisor's health check finds it gone and tells the gateway

        def unhealthy() -> bool:
            workers = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
            return workers[0]["healthy"] is False

        assert wait_for(unhealthy, timeout=60)
        failed = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["type"] == "service_unavailable"
        assert gw.process.poll() is None  # still serving
    finally:
        gw.stop()
        engine.stop()
