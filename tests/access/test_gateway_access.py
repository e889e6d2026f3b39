"""Auth, per-key limits and CORS on real gateway processes in front of the engine-sim, with the
official OpenAI and Anthropic SDKs as clients where they fit."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from tests.conftest import QWEN3, Proc, start_gateway, start_sim
from tests.gateway.test_chat import MODEL

ADMIN = "sk-admin-secret"
METRICS_KEY = "sk-metrics-secret"
ORIGIN = "https://app.example"
KEYS = {
    "free": {"key": "sk-free"},
    "rpm": {"key": "sk-rpm", "requests_per_minute": 2},
    "tpm": {"key": "sk-tpm", "tokens_per_minute": 10},
    "one": {"key": "sk-one", "max_concurrent": 1},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    # 20 ms per token: a stream of 1000 tokens lasts long enough to hold a slot while tested.
    proc = start_sim(QWEN3, "vllm", "--ttft-base-ms", "1", "--itl-base-ms", "20")
    yield proc
    proc.stop()


def _keys_file(tmp: Path) -> str:
    path = tmp / "keys.json"
    path.write_text(json.dumps(KEYS))
    return str(path)


def _gateway(sim: Proc, *extra: str, workers: int = 1) -> Proc:
    return start_gateway(
        sim.address,
        extra=(
            "--model-path",
            str(QWEN3),
            "--workers",
            str(workers),
            "--no-warm-spare",
            *extra,
        ),
    )


@pytest.fixture(scope="module")
def gateway(sim: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One process: every key, the admin and metrics keys, CORS for one origin."""
    proc = _gateway(
        sim,
        "--api-keys-file",
        _keys_file(tmp_path_factory.mktemp("keys")),
        "--api-key",
        "sk-cli",
        "--admin-api-key",
        ADMIN,
        "--metrics-api-key",
        METRICS_KEY,
        "--cors-allowed-origins",
        ORIGIN,
    )
    yield f"http://{proc.address}"
    proc.stop()


def _chat(max_tokens: int = 5, stream: bool = False) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- keys --------------------------------------------------------------------------------------
def test_openai_sdk_needs_a_key(gateway: str) -> None:
    bad = openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.body == {
        "message": "invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    good = openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-free", max_retries=0)
    answer = good.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    cli_key = openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-cli", max_retries=0)
    assert [m.id for m in cli_key.models.list()] == [MODEL]


def test_anthropic_sdk_needs_a_key(gateway: str) -> None:
    bad = anthropic.Anthropic(base_url=gateway, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    good = anthropic.Anthropic(base_url=gateway, api_key="sk-free", max_retries=0)
    message = good.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.usage.output_tokens == 3


def test_missing_key_and_open_routes(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as client:
        missing = client.post("/v1/chat/completions", json=_chat())
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert "missing API key" in missing.json()["error"]["message"]
        assert client.get("/nowhere").status_code == 401  # unknown routes are not revealed
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_bearer("sk-free")).status_code == 401
        metrics = client.get("/metrics", headers=_bearer(METRICS_KEY))
        assert metrics.status_code == 200
        # Neither the presented key nor a configured one is echoed anywhere.
        wrong = client.get("/v1/models", headers={"x-api-key": "sk-leaked-guess"})
        assert "sk-leaked-guess" not in wrong.text and "sk-free" not in wrong.text


def test_admin_key_guards_the_fleet(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as client:
        assert client.get("/workers").status_code == 401
        forbidden = client.get("/workers", headers=_bearer("sk-free"))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["type"] == "permission_error"
        add = client.post(
            "/workers", json={"url": "grpc://127.0.0.1:1"}, headers=_bearer("sk-free")
        )
        assert add.status_code == 403
        listed = client.get("/workers", headers={"x-api-key": ADMIN})
        assert listed.status_code == 200 and len(listed.json()["workers"]) == 1
        # The admin key is not a client key.
        assert client.get("/v1/models", headers=_bearer(ADMIN)).status_code == 401


# -- limits ------------------------------------------------------------------------------------
def _retry_after(response: httpx.Response) -> int:
    return int(response.headers["retry-after"])


def test_requests_per_minute(gateway: str) -> None:
    with httpx.Client(base_url=gateway, headers=_bearer("sk-rpm")) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 429
        assert 1 <= _retry_after(refused) <= 60
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        # Anthropic's shape on /v1/messages, with the same Retry-After.
        message = client.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]},
        )
        assert message.status_code == 429
        assert message.json()["error"]["type"] == "rate_limit_error"
        assert message.json()["type"] == "error"
        assert abs(_retry_after(message) - _retry_after(refused)) <= 1


def test_tokens_per_minute_counts_prompt_and_completion(gateway: str) -> None:
    """10 tokens a minute: the first request (prompt + 20 completion tokens, streamed) overdraws
    the bucket; the next one waits until it holds a token again: tokens x 6 s + 6 s - 60 s."""
    with httpx.Client(base_url=gateway, headers=_bearer("sk-tpm"), timeout=30) as client:
        body = _chat(max_tokens=20, stream=True) | {"stream_options": {"include_usage": True}}
        usage = None
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage") or usage
        assert usage is not None and usage["completion_tokens"] == 20
        started = time.monotonic()
        refused = client.post("/v1/chat/completions", json=_chat())
        assert refused.status_code == 429
        assert "tokens per minute" in refused.json()["error"]["message"]
        expected = usage["total_tokens"] * 6 + 6 - 60 - (time.monotonic() - started)
        assert abs(_retry_after(refused) - expected) <= 2


@contextlib.contextmanager
def _open_stream(client: httpx.Client, key: str) -> Iterator[None]:
    """A long stream holding one of ``key``'s concurrency slots: entered once its first event
    arrived (the slot is held), closed (the client gone) on exit."""
    body = _chat(1000, stream=True) | {"ignore_eos": True}
    headers = _bearer(key)
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept open: its collection would close the stream
        assert next(line for line in lines if line.startswith("data: "))
        yield


def _pid(client: httpx.Client) -> int:
    return int(client.get("/health").json()["pid"])


def test_concurrency_is_shared_by_the_gateway_processes(sim: Proc, tmp_path: Path) -> None:
    proc = _gateway(sim, "--api-keys-file", _keys_file(tmp_path), workers=2)
    base = f"http://{proc.address}"
    try:
        with httpx.Client(base_url=base, timeout=30) as holder:
            held_pid = _pid(holder)  # this connection's process
            with _open_stream(holder, "sk-one"):
                # A connection to the *other* process: the kernel spreads new connections.
                other = None
                for _ in range(200):
                    client = httpx.Client(base_url=base, timeout=30)
                    if _pid(client) != held_pid:
                        other = client
                        break
                    client.close()
                assert other is not None, "never reached the second process"
                with contextlib.closing(other):
                    refused = other.post(
                        "/v1/chat/completions", json=_chat(), headers=_bearer("sk-one")
                    )
                    assert refused.status_code == 429
                    assert refused.headers["retry-after"] == "1"
                    assert "1 concurrent requests" in refused.json()["error"]["message"]
                    # Other keys are not held back.
                    free = other.post(
                        "/v1/chat/completions", json=_chat(), headers=_bearer("sk-free")
                    )
                    assert free.status_code == 200
            # The stream is gone (client closed): its slot is free again, in either process.
            with httpx.Client(base_url=base, timeout=30) as client:
                assert _eventually_ok(client, "sk-one")
    finally:
        proc.stop()


def _eventually_ok(client: httpx.Client, key: str, deadline: float = 10.0) -> bool:
    """The gateway frees a slot when it sees the client gone, a moment after the close."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        answer = client.post("/v1/chat/completions", json=_chat(), headers=_bearer(key))
        if answer.status_code == 200:
            return True
        assert answer.status_code == 429
        time.sleep(0.05)
    return False


def test_limits_are_shared_by_replicas_through_redis(
    sim: Proc, tmp_path: Path, redis_url: str
) -> None:
    state = redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own in the session's server
    keys = _keys_file(tmp_path)
    first = _gateway(sim, "--api-keys-file", keys, "--state-url", state)
    second = _gateway(sim, "--api-keys-file", keys, "--state-url", state)
    try:
        a = httpx.Client(base_url=f"http://{first.address}", timeout=30)
        b = httpx.Client(base_url=f"http://{second.address}", timeout=30)
        with a, b:
            with _open_stream(a, "sk-one"):
                refused = b.post("/v1/chat/completions", json=_chat(), headers=_bearer("sk-one"))
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
            assert _eventually_ok(b, "sk-one")
            # Requests per minute: 2 in the minute, wherever they land.
            assert a.get("/v1/models", headers=_bearer("sk-rpm")).status_code == 200
            assert b.get("/v1/models", headers=_bearer("sk-rpm")).status_code == 200
            refused = a.get("/v1/models", headers=_bearer("sk-rpm"))
            assert refused.status_code == 429 and 1 <= _retry_after(refused) <= 60
    finally:
        first.stop()
        second.stop()


# -- CORS --------------------------------------------------------------------------------------
def test_cors_preflight_and_headers(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"]
        for name in ("authorization", "x-api-key", "content-type", "anthropic-version"):
            assert name in allowed
        foreign = client.options(
            "/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in foreign.headers

        headers = {"origin": ORIGIN, **_bearer("sk-free")}
        plain = client.post("/v1/chat/completions", json=_chat(), headers=headers)
        assert plain.headers["access-control-allow-origin"] == ORIGIN
        with client.stream(
            "POST", "/v1/chat/completions", json=_chat(stream=True), headers=headers
        ) as stream:
            assert stream.headers["access-control-allow-origin"] == ORIGIN
            stream.read()
        # Errors carry it too (a browser could not read them otherwise).
        denied = client.get("/v1/models", headers={"origin": ORIGIN})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == ORIGIN
        other = client.get("/v1/models", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_nothing_changes_without_configuration(sim: Proc) -> None:
    proc = _gateway(sim)
    try:
        with httpx.Client(base_url=f"http://{proc.address}") as client:
            answer = client.post("/v1/chat/completions", json=_chat(), headers={"origin": ORIGIN})
            assert answer.status_code == 200
            assert "access-control-allow-origin" not in answer.headers
            assert client.get("/workers").status_code == 200
            assert client.get("/metrics").status_code == 200
    finally:
        proc.stop()
