"""Engine faults through a real gateway: every request ends with a complete response, a 4xx/5xx
before any byte, or an SSE error event then [DONE]; nothing hangs past its deadline; what can
be retried (nothing reached the client yet) is retried, on another worker when there is one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from tests.faults.common import chat, gateway, log_lines, metric, sim, stream_outcome, wait_for

pytestmark = pytest.mark.slow


def _post(base: str, body: dict[str, object], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=timeout)


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_a_crash_mid_generation_is_retried_for_unstreamed_requests(tmp_path: Path) -> None:
    crashy, _ = sim(tmp_path, "crashy", "--exit-after-tokens", "4")
    healthy, _ = sim(tmp_path, "healthy")
    gw = gateway(crashy, healthy)
    base = f"http://{gw.address}"
    try:
        for _ in range(4):
            response = _post(base, chat(max_tokens=12))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["choices"][0]["finish_reason"] == "length"
            assert body["usage"]["completion_tokens"] == 12
        assert crashy.process.wait(30) == 3  # it really died mid-generation
        assert metric(base, "herdsman_retries_total") >= 1
    finally:
        gw.stop()
        crashy.stop()
        healthy.stop()


def test_a_crash_after_tokens_reached_the_client_ends_the_stream_with_an_error(
    tmp_path: Path,
) -> None:
    crashy, _ = sim(tmp_path, "crashy", "--exit-after-tokens", "5")
    gw = gateway(crashy)
    base = f"http://{gw.address}"
    try:
        body = chat(max_tokens=50, stream=True)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            events, error = stream_outcome(r)
        assert any(e["choices"][0]["delta"].get("content") for e in events if e["choices"])
        assert error is not None and error["code"] == "engine_unavailable", error
        # Nothing is left to serve: a plain 503 before any byte, OpenAI-shaped.
        after = _post(base, chat(max_tokens=3))
        assert after.status_code == 503
        assert after.json()["error"]["type"] == "service_unavailable"
    finally:
        gw.stop()
        crashy.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_that_never_answers_times_out_and_gets_an_abort(
    tmp_path: Path, stream: bool
) -> None:
    hung, log = sim(tmp_path, "hung", "--hang")
    gw = gateway(hung, flags=("--request-timeout", "1"))
    base = f"http://{gw.address}"
    try:
        response = _post(base, chat(max_tokens=5, stream=stream), timeout=60)
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["code"] == "timeout" and error["type"] == "timeout_error"
        # The engine is told to drop the request (the stream's cancel, and an Abort).
        assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(log)))
    finally:
        gw.stop()
        hung.stop()


def test_engine_errors_after_output_are_retried_then_reported(tmp_path: Path) -> None:
    failing, _ = sim(tmp_path, "failing", "--fail-after-tokens", "3")
    gw = gateway(failing, flags=("--max-retries", "2", "--retry-initial-backoff", "0.01"))
    base = f"http://{gw.address}"
    try:
        response = _post(base, chat(max_tokens=10))
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "engine_error"
        assert metric(base, "herdsman_retries_total") == 2  # three attempts in all

        # Streamed, the first tokens went out: no retry, an error event.
        body = chat(max_tokens=10, stream=True)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            events, error = stream_outcome(r)
        assert events and error is not None and error["code"] == "engine_error"
        assert metric(base, "herdsman_retries_total") == 2
    finally:
        gw.stop()
        failing.stop()


def test_a_worker_that_keeps_failing_is_cut_off_by_its_circuit(tmp_path: Path) -> None:
    bad, _ = sim(tmp_path, "bad", "--fail-after-tokens", "1")
    good, _ = sim(tmp_path, "good", "--response-text", "good answer")
    gw = gateway(bad, good, flags=("--cb-failure-threshold", "2", "--retry-initial-backoff", "0"))
    base = f"http://{gw.address}"
    try:
        for _ in range(12):
            assert _text(_post(base, chat(max_tokens=8))) == "good answer"
        # Two failures opened the circuit; afterwards the bad worker got no more requests,
        # although its health checks pass.
        assert metric(base, "herdsman_engine_failures_total") == 2
        assert metric(base, "herdsman_worker_circuit_opened_total") == 1
        assert metric(base, "herdsman_worker_circuit_open") == 1
        assert httpx.get(f"{base}/health", timeout=10).json()["healthy_workers"] == 2
    finally:
        gw.stop()
        bad.stop()
        good.stop()


def test_a_worker_that_comes_back_is_used_again(tmp_path: Path) -> None:
    alpha, _ = sim(tmp_path, "alpha", "--response-text", "alpha")
    beta, _ = sim(tmp_path, "beta", "--response-text", "beta")
    port = int(alpha.address.rsplit(":", 1)[1])
    gw = gateway(alpha, beta)
    base = f"http://{gw.address}"
    try:
        assert {_text(_post(base, chat())) for _ in range(4)} == {"alpha", "beta"}
        os.kill(alpha.process.pid, signal.SIGKILL)
        alpha.process.wait(10)
        # Gone: every request is still answered, by the worker that is left.
        assert {_text(_post(base, chat())) for _ in range(6)} == {"beta"}
        assert wait_for(lambda: httpx.get(f"{base}/health").json()["healthy_workers"] == 1)
        # Back on the same address: health checks see it and requests reach it again.
        alpha, _ = sim(tmp_path, "alpha-again", "--response-text", "alpha", port=port)
        assert wait_for(lambda: httpx.get(f"{base}/health").json()["healthy_workers"] == 2)
        assert wait_for(lambda: _text(_post(base, chat())) == "alpha")
    finally:
        gw.stop()
        alpha.stop()
        beta.stop()
