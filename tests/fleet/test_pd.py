"""Prefill/decode disaggregation through the gateway, against engine-sim in its PD roles, for both
protocols: SGLang's dual dispatch with bootstrap rooms, vLLM's two steps with kv_transfer_params.

The sims hand the KV off over real sockets (a decode waits for its prefill's handoff), refuse a
request that lacks what pairing needs, and log every abort, so each test shows the gateway did
what the protocol wants, not only that an answer came back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import _GATEWAY_READY, QWEN3, Proc, start_sim, wait_for_line
from tests.faults.common import log_lines, wait_for
from tests.fleet.test_fleet import free_port

pytestmark = pytest.mark.slow

FAST = ("--ttft-base-ms", "1", "--prefill-ms-per-1k", "0", "--itl-base-ms", "1")
TEXT = "The answer, decoded on the decode worker."
BACKENDS = ["vllm", "sglang"]


def pd_sim(backend: str, role: str, *flags: str, text: str = TEXT, log: Path | None = None) -> Proc:
    extra = [*FAST, "--response-text", text, "--role", role, *flags]
    if role == "prefill" and "--bootstrap-port" not in flags:
        extra += ["--bootstrap-port", "0"]  # bound by the sim: no pick-then-bind race
    if log is not None:
        extra += ["--abort-log", str(log)]
    return start_sim(QWEN3, backend, *extra)


def gateway(
    prefills: list[tuple[Proc, int | None]],
    decodes: list[Proc],
    *flags: str,
    regular: tuple[Proc, ...] = (),
) -> Proc:
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--log-level", "warning"]
    argv += ["--model-path", str(QWEN3), "--no-warm-spare", "--workers", "1", *flags]
    for proc, port in prefills:
        argv += ["--prefill", f"grpc://{proc.address}"] + ([str(port)] if port else [])
    for proc in decodes:
        argv += ["--decode", f"grpc://{proc.address}"]
    for proc in regular:
        argv += ["--worker", f"grpc://{proc.address}"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    match = wait_for_line(process, _GATEWAY_READY, 120)
    return Proc(process, f"{match.group(1).decode()}:{match.group(2).decode()}")


def chat(base: str, **extra: object) -> httpx.Response:
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def stop_all(*procs: Proc) -> None:
    for proc in procs:
        proc.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(backend: str, tmp_path: Path) -> Iterator[tuple[Proc, Proc, Proc, Path, Path]]:
    """A prefill sim, a decode sim and a gateway pairing them (the engine states its bootstrap
    port), each sim logging the aborts it receives."""
    p_log, d_log = tmp_path / "prefill.aborts", tmp_path / "decode.aborts"
    prefill = pd_sim(backend, "prefill", log=p_log)
    decode = pd_sim(backend, "decode", log=d_log)
    gw = gateway([(prefill, None)], [decode])
    try:
        yield prefill, decode, gw, p_log, d_log
    finally:
        stop_all(gw, prefill, decode)


def test_requests_are_served_by_the_pair(pair: tuple[Proc, Proc, Proc, Path, Path]) -> None:
    _, _, gw, _, _ = pair
    base = f"http://{gw.address}"
    answer = chat(base)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == TEXT
    assert answer.json()["usage"]["completion_tokens"] > 1
    # n > 1: one prefill (one room, or one handoff), n choices decoded.
    several = chat(base, n=3, temperature=0.8, seed=1)
    assert several.status_code == 200, several.text
    assert [c["message"]["content"] for c in several.json()["choices"]] == [TEXT] * 3
    # Streamed: every token comes from the decode stream.
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        text = ""
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    assert text == TEXT
    workers = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
    assert sorted(w["role"] for w in workers) == ["decode", "prefill"]
    for view in workers:
        assert view["pairing"]["incompatible"] == {}


def test_the_sglang_bootstrap_port_is_read_from_the_engine(
    pair: tuple[Proc, Proc, Proc, Path, Path], backend: str
) -> None:
    _, _, gw, _, _ = pair
    workers = httpx.get(f"http://{gw.address}/workers", timeout=10).json()["workers"]
    [prefill_view] = [w for w in workers if w["role"] == "prefill"]
    port = prefill_view["pairing"]["bootstrap_port"]
    # SGLang's handoff needs it (the engine states it in its server args); vLLM's names its
    # own side channel in the handoff.
    assert isinstance(port, int) if backend == "sglang" else port is None


def test_a_client_gone_mid_stream_aborts_both(
    pair: tuple[Proc, Proc, Proc, Path, Path],
) -> None:
    _, _, gw, p_log, d_log = pair
    body = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"http://{gw.address}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        request_id = ""
        for line in response.iter_lines():
            if line.startswith("data: {"):
                request_id = json.loads(line[6:])["id"]
                break
    assert request_id
    aborted = ("abort", "cancel")
    assert wait_for(lambda: any(line.split()[0] in aborted for line in log_lines(d_log)), 30)
    assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(p_log)), 30)


def test_a_request_the_prefill_fails_is_retried_on_another_prefill(
    backend: str, tmp_path: Path
) -> None:
    # A prefill that refuses every Generate (RESOURCE_EXHAUSTED) while its health is fine, and
    # one that is gone (UNAVAILABLE) before the health checks notice: round robin sends
    # requests to both, and each such attempt moves to the good prefill.
    busy = pd_sim(backend, "prefill", "--busy")
    gone = pd_sim(backend, "prefill")
    good = pd_sim(backend, "prefill")
    decode = pd_sim(backend, "decode")
    prefills = [(busy, None), (gone, None), (good, None)]
    gw = gateway(prefills, [decode], "--prefill-policy", "round_robin")
    gone.stop()
    base = f"http://{gw.address}"
    try:
        for _ in range(6):
            answer = chat(base)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == TEXT
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        [retries] = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("herdsman_retries_total")
        ]
        assert retries >= 2
    finally:
        stop_all(gw, busy, gone, good, decode)


def test_a_decode_whose_kv_never_comes_fails_clearly_and_aborts_both(
    backend: str, tmp_path: Path
) -> None:
    p_log, d_log = tmp_path / "prefill.aborts", tmp_path / "decode.aborts"
    prefill = pd_sim(backend, "prefill", "--drop-kv", log=p_log)
    decode = pd_sim(backend, "decode", "--kv-transfer-timeout-ms", "600000", log=d_log)
    gw = gateway([(prefill, None)], [decode], "--kv-transfer-timeout", "1")
    try:
        answer = chat(f"http://{gw.address}")
        assert answer.status_code == 504, answer.text
        error = answer.json()["error"]
        assert "did not receive the KV cache" in error["message"]
        assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(d_log)), 30)
        assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(p_log)), 30)
        # The gateway keeps serving.
        assert httpx.get(f"http://{gw.address}/health", timeout=10).status_code == 200
    finally:
        stop_all(gw, prefill, decode)


def test_an_incompatible_pair_is_never_formed(backend: str) -> None:
    prefill = pd_sim(backend, "prefill", "--block-size", "32")
    other = pd_sim(backend, "decode", "--block-size", "16")
    gw = gateway([(prefill, None)], [other])
    try:
        refused = chat(f"http://{gw.address}")
        assert refused.status_code == 503, refused.text
        assert "block_size differs" in refused.json()["error"]["message"]
        views = httpx.get(f"http://{gw.address}/workers", timeout=10).json()["workers"]
        [decode_view] = [w for w in views if w["role"] == "decode"]
        [reason] = decode_view["pairing"]["incompatible"].values()
        assert reason == "block_size differs: prefill 32, decode 16"
    finally:
        stop_all(gw, prefill, other)


def test_only_compatible_decodes_are_chosen(backend: str, tmp_path: Path) -> None:
    wrong_log, right_log = tmp_path / "wrong.aborts", tmp_path / "right.aborts"
    prefill = pd_sim(backend, "prefill", "--kv-cache-dtype", "fp8")
    wrong = pd_sim(backend, "decode", "--kv-cache-dtype", "auto", text="wrong", log=wrong_log)
    right = pd_sim(backend, "decode", "--kv-cache-dtype", "fp8", log=right_log)
    gw = gateway([(prefill, None)], [wrong, right], "--decode-policy", "round_robin")
    try:
        for _ in range(4):
            answer = chat(f"http://{gw.address}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == TEXT
    finally:
        stop_all(gw, prefill, wrong, right)


def test_sglang_data_parallel_prefill_rank_follows_the_room() -> None:
    """The prefill sim refuses a request whose rank is not ``room % dp_size`` (SGLang's rule):
    every request to a 4-rank prefill succeeds, on every rank."""
    port = free_port()
    prefill = pd_sim(
        "sglang", "prefill", "--data-parallel-size", "4", "--bootstrap-port", str(port)
    )
    decode = pd_sim("sglang", "decode")
    # The bootstrap port given on the command line, as SMG's --prefill URL PORT takes it.
    gw = gateway([(prefill, port)], [decode], "--prefill-policy", "round_robin")
    try:
        for _ in range(8):
            answer = chat(f"http://{gw.address}")
            assert answer.status_code == 200, answer.text
        views = httpx.get(f"http://{gw.address}/workers", timeout=10).json()["workers"]
        ranks = sorted(w["dp_rank"] for w in views if w["role"] == "prefill")
        assert ranks == [0, 1, 2, 3]
    finally:
        stop_all(gw, prefill, decode)


def test_regular_workers_serve_when_no_pair_can_only_if_allowed(backend: str) -> None:
    prefill = pd_sim(backend, "prefill")
    decode = pd_sim(backend, "decode")
    regular = start_sim(QWEN3, backend, *FAST, "--response-text", "from the regular worker")
    allowed = gateway([(prefill, None)], [decode], "--pd-fallback", regular=(regular,))
    strict = gateway([(prefill, None)], [decode], regular=(regular,))
    try:
        assert chat(f"http://{allowed.address}").json()["choices"][0]["message"]["content"] == TEXT
        decode.stop()  # the pair is gone: health checks or the failed attempt mark it down
        assert wait_for(
            lambda: (
                chat(f"http://{allowed.address}").json()["choices"][0]["message"]["content"]
                == "from the regular worker"
            ),
            60,
        )
        refused = chat(f"http://{strict.address}")
        assert refused.status_code in (502, 503), refused.text
    finally:
        stop_all(allowed, strict, prefill, decode, regular)


def test_roles_through_the_admin_api(backend: str) -> None:
    prefill = pd_sim(backend, "prefill")
    decode = pd_sim(backend, "decode")
    regular = start_sim(QWEN3, backend, *FAST, "--response-text", "regular")
    gw = gateway([], [], regular=(regular,))
    base = f"http://{gw.address}"
    try:
        assert chat(base).json()["choices"][0]["message"]["content"] == "regular"
        bad = httpx.post(
            f"{base}/workers", json={"url": f"grpc://{decode.address}", "role": "both"}
        )
        assert bad.status_code == 400
        for proc, role in ((prefill, "prefill"), (decode, "decode")):
            added = httpx.post(
                f"{base}/workers",
                json={"url": f"grpc://{proc.address}", "worker_type": role},
                timeout=60,
            )
            assert added.status_code == 200, added.text
            assert added.json()["role"] == role
        # The model now has a pair: its requests are disaggregated.
        assert chat(base).json()["choices"][0]["message"]["content"] == TEXT
        roles = sorted(w["role"] for w in httpx.get(f"{base}/workers").json()["workers"])
        assert roles == ["decode", "prefill", "regular"]
    finally:
        stop_all(gw, prefill, decode, regular)
