"""Engine faults through a real gateway: every request ends with a complete response, a 4xx/5xx
before any byte, or an SSE error event then [DONE]; nothing hangs past its deadline; what can
be retried (nothing reached the client yet) is retried, on another worker when there is one."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from tests.conftest import Proc
from tests.faultproxy import FaultProxy
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


def test_a_frozen_engine_fails_its_streams_and_its_requests_move_on(tmp_path: Path) -> None:
    frozen, _ = sim(tmp_path, "frozen", "--itl-base-ms", "10")
    other, _ = sim(tmp_path, "other", "--response-text", "other answer")
    gw = gateway(
        frozen,
        other,
        flags=(
            "--engine-keepalive-interval", "0.5", "--engine-keepalive-timeout", "0.5",
            "--health-check-timeout", "1",
        ),
    )  # fmt: skip
    base = f"http://{gw.address}"
    try:
        body = chat(max_tokens=3000, stream=True)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # round robin: the first worker, `frozen`
            os.kill(frozen.process.pid, signal.SIGSTOP)  # its TCP stays open; nothing answers
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: ") :])["error"]
        assert error["code"] == "engine_unavailable", error
        # Unstreamed requests are answered by the engine that is left, retried if need be.
        for _ in range(3):
            assert _text(_post(base, chat(max_tokens=4))) == "other answer"
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
        gw.stop()
        frozen.stop()
        other.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_that_stalls_after_its_first_tokens_hits_the_deadline(
    tmp_path: Path, stream: bool
) -> None:
    stalling, log = sim(tmp_path, "stalling", "--hang-after-tokens", "3")
    gw = gateway(stalling, flags=("--request-timeout", "1.5"))
    base = f"http://{gw.address}"
    try:
        if stream:
            body = chat(max_tokens=50, stream=True)
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
                assert r.status_code == 200
                events, error = stream_outcome(r)
            assert events and error is not None and error["code"] == "timeout", error
        else:
            # Unstreamed, the engine sends nothing until it is done: a plain 504.
            response = _post(base, chat(max_tokens=50))
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
        assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(log)))
    finally:
        gw.stop()
        stalling.stop()


def test_streams_cross_the_engines_goaway(tmp_path: Path) -> None:
    """The engine closes its connections every 300 ms (GOAWAY); streams in flight finish and
    new ones go to a new connection."""
    ageing, _ = sim(
        tmp_path,
        "ageing",
        "--itl-base-ms", "5",
        "--max-connection-age-ms", "300",
        "--max-connection-age-grace-ms", "30000",
    )  # fmt: skip
    gw = gateway(ageing)
    base = f"http://{gw.address}"
    results: list[tuple[list[dict], dict | None]] = []

    def one() -> None:
        body = chat(max_tokens=120, stream=True)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            results.append(stream_outcome(r))

    try:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 8
        for events, error in results:
            assert error is None
            assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert _post(base, chat(max_tokens=3)).status_code == 200
    finally:
        gw.stop()
        ageing.stop()


def test_resource_exhausted_storms_are_back_pressure_not_failure(tmp_path: Path) -> None:
    storm, _ = sim(tmp_path, "storm", "--busy-fraction", "0.5", "--seed", "3")
    gw = gateway(storm, flags=("--retry-initial-backoff", "0.005", "--cb-failure-threshold", "2"))
    base = f"http://{gw.address}"
    try:
        statuses = [_post(base, chat(max_tokens=3)).status_code for _ in range(40)]
        assert set(statuses) <= {200, 429}, statuses
        # Half the engine's calls are refused, but retries carry almost every request through.
        assert statuses.count(200) >= 30, statuses
        # Back-pressure is not failure: no circuit opened, the worker stays in service.
        assert metric(base, "herdsman_worker_circuit_opened_total") == 0
        assert httpx.get(f"{base}/health", timeout=10).json()["healthy_workers"] == 1
    finally:
        gw.stop()
        storm.stop()


def test_an_engine_at_capacity_gets_429_not_503(tmp_path: Path) -> None:
    full, _ = sim(tmp_path, "full", "--busy")
    gw = gateway(full, flags=("--retry-initial-backoff", "0.005"))
    base = f"http://{gw.address}"
    try:
        for _ in range(5):
            response = _post(base, chat(max_tokens=3))
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "engine_overloaded"
            assert int(response.headers["retry-after"]) >= 1
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    finally:
        gw.stop()
        full.stop()


def test_connection_resets_cut_streams_and_unstreamed_requests_are_retried(
    tmp_path: Path,
) -> None:
    behind, _ = sim(tmp_path, "behind", "--itl-base-ms", "10")
    direct, _ = sim(tmp_path, "direct", "--response-text", "direct answer")
    host, port = behind.address.rsplit(":", 1)
    with FaultProxy((host, int(port))) as proxy:
        gw = gateway(Proc(behind.process, proxy.address), direct)
        base = f"http://{gw.address}"
        try:
            body = chat(max_tokens=3000, stream=True)
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")  # on `behind`, through the proxy
                proxy.reset()
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2][len("data: ") :])["error"]["code"] == "engine_unavailable"
            # Every new connection to `behind` is reset too: its requests go to `direct`.
            for _ in range(4):
                assert _text(_post(base, chat(max_tokens=4))) == "direct answer"
            proxy.pass_through()
        finally:
            gw.stop()
            behind.stop()
            direct.stop()


def test_a_slow_engine_does_not_hold_up_the_others(tmp_path: Path) -> None:
    slow, _ = sim(tmp_path, "slow", "--itl-base-ms", "100")
    fast, _ = sim(tmp_path, "fast", "--response-text", "fast answer")
    gw = gateway(slow, fast)
    base = f"http://{gw.address}"
    try:
        body = chat(max_tokens=40, stream=True)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the slow engine's stream is running
            # Meanwhile the fast engine answers everything else (round robin alternates; the
            # slow engine's share queues behind nothing and finishes at its own pace).
            answered = [_text(_post(base, chat(max_tokens=4))) for _ in range(4)]
            assert answered.count("fast answer") >= 2
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in rest[-2] or '"finish_reason":"length"' in "".join(rest)
    finally:
        gw.stop()
        slow.stop()
        fast.stop()
