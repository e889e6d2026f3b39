"""Bad input, missing workers and failing engines: clear errors, and the gateway keeps serving."""

from __future__ import annotations

import socket

import httpx
import pytest
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL, chat, sse_events


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "param" in error and "code" in error
    return error


def test_invalid_json(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},  # no model
        {"model": MODEL},  # no messages
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "logprobs": True,
            "top_logprobs": 50,
        },
    ],
)
def test_invalid_fields(base_url: str, body: dict) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body)
    assert_openai_error(response, 400)


def test_max_tokens_error_names_the_numbers(base_url: str) -> None:
    error = assert_openai_error(chat(base_url, max_tokens=10**6), 400)
    assert "40960" in error["message"] and error["param"] == "max_tokens"


def test_unknown_model(base_url: str) -> None:
    error = assert_openai_error(chat(base_url, model="gpt-17"), 404)
    assert error["code"] == "model_not_found"


def test_unknown_route_and_method(base_url: str) -> None:
    assert_openai_error(httpx.get(f"{base_url}/v1/nothing"), 404)
    assert_openai_error(httpx.get(f"{base_url}/v1/chat/completions"), 405)


def test_body_too_large(sim) -> None:
    gateway = start_gateway(sim.address, extra=("--max-body-bytes", "1000"))
    try:
        response = httpx.post(
            f"http://{gateway.address}/v1/completions", json={"model": MODEL, "prompt": "x" * 5000}
        )
        assert_openai_error(response, 413)
    finally:
        gateway.stop()


def test_still_serving_after_bad_requests(base_url: str) -> None:
    for _ in range(5):
        httpx.post(f"{base_url}/v1/chat/completions", content=b"[")
    assert chat(base_url, max_tokens=3).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_healthy_worker_is_503() -> None:
    sim = start_sim(QWEN3, "vllm", "--ttft-base-ms", "0", "--itl-base-ms", "0")
    gateway = start_gateway(
        sim.address, extra=("--model-path", str(QWEN3), "--health-check-interval", "0.2")
    )
    try:
        assert chat(f"http://{gateway.address}", max_tokens=2).status_code == 200
        sim.stop()
        error = assert_openai_error(chat(f"http://{gateway.address}", max_tokens=2), 503)
        assert error["type"] == "service_unavailable"
        assert httpx.get(f"http://{gateway.address}/health").status_code == 503
    finally:
        gateway.stop()
        sim.stop()


def test_failed_worker_is_skipped() -> None:
    good = start_sim(QWEN3, "vllm", "--ttft-base-ms", "0", "--itl-base-ms", "0")
    bad = start_sim(QWEN3, "vllm", "--reject-new")
    gateway = start_gateway(
        good.address, bad.address, extra=("--model-path", str(QWEN3), "--backend", "vllm")
    )
    try:
        for _ in range(6):
            assert chat(f"http://{gateway.address}", max_tokens=2).status_code == 200
    finally:
        gateway.stop()
        good.stop()
        bad.stop()


def test_engine_failure_mid_stream_is_an_sse_error(backend: str) -> None:
    sim = start_sim(QWEN3, backend, "--fail-after-tokens", "5", "--itl-base-ms", "1")
    gateway = start_gateway(sim.address)
    try:
        url = f"http://{gateway.address}/v1/chat/completions"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "stream": True,
        }
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            assert response.status_code == 200
            events = sse_events(response)
        assert "error" in events[-1]
        assert events[-1]["error"]["code"] == "engine_error"
        assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events)
        # Non-streamed, the same failure is a plain 502.
        assert_openai_error(httpx.post(url, json={**body, "stream": False}, timeout=30), 502)
    finally:
        gateway.stop()
        sim.stop()
