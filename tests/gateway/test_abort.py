"""A client that goes away mid-stream makes the gateway send Abort to the engine."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL


def _read_log(path: Path) -> list[str]:
    return path.read_text().split("\n") if path.exists() else []


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_sends_abort(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "aborts.log"
    sim = start_sim(QWEN3, backend, "--itl-base-ms", "20", "--abort-log", str(log))
    gateway = start_gateway(sim.address)
    try:
        url = f"http://{gateway.address}/v1/chat/completions"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2000,
            "stream": True,
        }
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(6)]
            request_id = None
            for line in seen:
                if line.startswith("data: {"):
                    request_id = line.split('"id":"', 1)[1].split('"', 1)[0]
                    break
            assert request_id
        # Leaving the block closes the connection mid-stream.
        assert _wait_for(lambda: f"abort {request_id}" in _read_log(log)), _read_log(log)
        # The gateway keeps serving.
        ok = httpx.post(url, json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200
    finally:
        gateway.stop()
        sim.stop()


def test_disconnect_while_engine_hangs_sends_abort(tmp_path: Path) -> None:
    log = tmp_path / "aborts.log"
    sim = start_sim(QWEN3, "vllm", "--hang", "--abort-log", str(log))
    gateway = start_gateway(sim.address, extra=("--model-path", str(QWEN3)))
    try:
        host, port = gateway.address.split(":")
        body = b'{"model":"qwen3","messages":[{"role":"user","content":"hi"}],"stream":true}'
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            time.sleep(0.5)
        assert _wait_for(lambda: any(line.startswith("abort ") for line in _read_log(log)))
    finally:
        gateway.stop()
        sim.stop()
