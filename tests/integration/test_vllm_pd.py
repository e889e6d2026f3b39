"""Prefill/decode disaggregation with real vLLM engines: a prefill vLLM and a decode vLLM (vLLM's
NixlConnector, which runs on the CPU platform: the KV cache registered as DRAM, moved over UCX)
behind herdsman, which sends the prefill its one-token request with ``do_remote_decode`` and the
decode the ``kv_transfer_params`` it returned. Greedy output must equal the single engine's (the
session's shared vLLM, behind a gateway of its own), token for token.

On 2 cores each engine is pinned to its own core (VLLM_CPU_OMP_THREADS_BIND): unpinned, both
spread over both cores and a 16-token request takes ~3 s instead of ~0.3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import _GATEWAY_READY, wait_for_line

from .conftest import (
    SERVED_NAME,
    Gateway,
    VllmServer,
    _health_serving,
    engine_port,
    grpc_server_argv,
    launch_vllm,
    start_gateway_logged,
    vllm_env,
    wait_vllm_ready,
)

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog. " * 3,
    # Longer than one KV block (vLLM's CPU block is 128 tokens): several blocks move.
    " ".join(f"item {i}: a line of a long prompt" for i in range(60)),
]


def _connector(role: str) -> str:
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"})


@pytest.fixture(scope="module")
def pd_engines(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VllmServer, VllmServer]]:
    logs = tmp_path_factory.mktemp("vllm-pd")
    taken: set[int] = set()

    def port() -> int:
        chosen = engine_port(taken)
        taken.add(chosen)
        return chosen

    servers = []
    for role, core in (("kv_producer", "0"), ("kv_consumer", "1")):
        grpc_port, side_channel = port(), port()
        argv = grpc_server_argv(
            vllm_python,
            tiny_model,
            SERVED_NAME,
            grpc_port,
            "--enable-log-requests",
            "--kv-transfer-config",
            _connector(role),
        )
        env = vllm_env(
            VLLM_NIXL_SIDE_CHANNEL_PORT=str(side_channel), VLLM_CPU_OMP_THREADS_BIND=core
        )
        log = logs / f"{role}.log"
        servers.append(launch_vllm(argv, log, f"127.0.0.1:{grpc_port}", env))
    try:
        for server in servers:
            wait_vllm_ready(server, _health_serving)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _pd_gateway(prefill: str, decode: str, model: Path, log: Path) -> Gateway:
    """``herdsman serve`` with a prefill and a decode worker and nothing else."""
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--host", "127.0.0.1"]
    argv += ["--workers", "1", "--no-warm-spare", "--model-path", str(model)]
    argv += ["--prefill", f"grpc://{prefill}", "--decode", f"grpc://{decode}"]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sink)
    match = wait_for_line(process, _GATEWAY_READY, 120)
    return Gateway(process, f"{match.group(1).decode()}:{match.group(2).decode()}", log)


@pytest.fixture(scope="module")
def gateways(
    pd_engines: tuple[VllmServer, VllmServer],
    vllm_server: VllmServer,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, Gateway]]:
    """A gateway in front of the single engine, and one in front of the pair."""
    prefill, decode = pd_engines
    logs = tmp_path_factory.mktemp("gateway-pd")
    single = start_gateway_logged(
        vllm_server.address, logs / "single.log", "--model-path", str(tiny_model)
    )
    try:
        pd = _pd_gateway(prefill.address, decode.address, tiny_model, logs / "pd.log")
    except BaseException:
        single.stop()
        raise
    try:
        views = httpx.get(f"http://{pd.address}/workers", timeout=10).json()["workers"]
        assert sorted(w["role"] for w in views) == ["decode", "prefill"]
        for view in views:
            assert view["pairing"]["incompatible"] == {}, view
        yield single, pd
    finally:
        pd.stop()
        single.stop()


def _ask(base: str, kind: str, prompt: str, stream: bool) -> tuple[str, list[int]]:
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if kind == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt
    if not stream:
        answer = httpx.post(f"{base}{path}", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        return text, choice["token_ids"]
    text, ids = "", []
    body["stream"] = True
    with httpx.stream("POST", f"{base}{path}", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice.get("delta", {}).get("content") if kind == "chat" else None
                text += (delta if kind == "chat" else choice.get("text")) or ""
                ids += choice.get("token_ids") or []
    return text, ids


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_pd_output_equals_the_single_engine(
    gateways: tuple[Gateway, Gateway], kind: str, stream: bool
) -> None:
    single, pd_gateway = gateways
    for prompt in PROMPTS:
        expected = _ask(f"http://{single.address}", kind, prompt, stream)
        got = _ask(f"http://{pd_gateway.address}", kind, prompt, stream)
        assert len(expected[1]) == 16
        assert got == expected, prompt


def test_both_engines_served_and_the_kv_moved(
    pd_engines: tuple[VllmServer, VllmServer], gateways: tuple[Gateway, Gateway]
) -> None:
    """Requests reached the prefill and the decode, and the decode pulled KV blocks over NIXL
    (its connector's own transfer record, logged with vLLM's periodic stats)."""
    prefill, decode = pd_engines
    _, pd = gateways
    assert "Added request" in prefill.log_text()
    assert "Added request" in decode.log_text()
    deadline = time.monotonic() + 120
    while "KV Transfer metrics: Num successful transfers=" not in decode.log_text():
        assert time.monotonic() < deadline, decode.log_tail()
        _ask(f"http://{pd.address}", "completion", PROMPTS[2], False)
        time.sleep(2.0)  # a poll on the log, not a timing assumption: the deadline is the bound
