"""GET /metrics: Prometheus text, aggregated over every gateway process."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL
from tests.unit.test_metrics import documented_metrics, exposed_metrics


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + labels) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{labels} missing"
    return float(match.group(1))


def test_metrics_are_aggregated_over_processes() -> None:
    # 20 ms between tokens: the sim ships one token per message unless its writer falls a whole
    # step behind (at 1 ms a busy machine merged two tokens into one message: one ITL fewer).
    sim = start_sim(QWEN3, "vllm", "--itl-base-ms", "20")
    gateway = start_gateway(sim.address, extra=("--model-path", str(QWEN3), "--workers", "2"))
    base = f"http://{gateway.address}"
    try:
        pids = set()
        for _ in range(12):
            with httpx.Client() as client:  # new connections spread over both processes
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 5,
                    "stream": True,
                }
                response = client.post(f"{base}/v1/chat/completions", json=body)
                assert response.status_code == 200
                assert response.text.endswith("data: [DONE]\n\n")
                pids.add(client.get(f"{base}/health").json()["pid"])
        assert len(pids) == 2

        def scrape() -> tuple[int, str]:
            with httpx.Client() as client:  # one connection: /health names the answering process
                pid = client.get(f"{base}/health").json()["pid"]
                return pid, client.get(f"{base}/metrics").text

        # Each process shows its own per-token histogram live and the other's as of its last
        # snapshot (about once a second): wait until both processes' renders show every token.
        complete: set[int] = set()
        deadline = time.monotonic() + 30
        while complete != pids and time.monotonic() < deadline:
            pid, text = scrape()
            if _value(text, "herdsman_inter_token_latency_seconds_count") == 48:
                complete.add(pid)
            time.sleep(0.05)
        assert complete == pids
        seen = []
        for _ in range(6):
            with httpx.Client() as client:
                text = client.get(f"{base}/metrics").text
            seen.append(
                _value(
                    text,
                    "herdsman_requests_total",
                    '{endpoint="/v1/chat/completions",status="200"}',
                )
            )
            assert _value(text, "herdsman_generation_tokens_total") == 60
            assert _value(text, "herdsman_time_to_first_token_seconds_count") == 12
            assert _value(text, "herdsman_inter_token_latency_seconds_count") == 48
            for stage in ("template", "tokenize", "engine"):
                assert _value(text, "herdsman_stage_seconds_count", f'{{stage="{stage}"}}') == 12
            assert _value(text, "herdsman_in_flight_requests") == 0
        assert seen == [12.0] * 6
        missing = exposed_metrics(text) - documented_metrics()
        assert not missing, f"on /metrics but not in docs/metrics.md: {sorted(missing)}"
        # Process metrics: one series per gateway process.
        rss = re.findall(r'^process_resident_memory_bytes\{pid="(\d+)"\}', text, re.MULTILINE)
        assert set(rss) == {str(pid) for pid in pids}
    finally:
        gateway.stop()
        sim.stop()


def test_request_labels_are_routes_not_raw_paths(base_url: str) -> None:
    for path in ("/v1/models", "/v1/models/", "/v1/models///", "/nope/1", "/nope/2?x=1"):
        httpx.get(f"{base_url}{path}", timeout=30)

    def labels() -> set[str]:
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        return set(re.findall(r'herdsman_requests_total\{endpoint="([^"]*)"', text))

    # Whichever process answers shows the others' counts as of their last snapshot (once a
    # second): gather what every render shows until both routes have appeared.
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while not {"/v1/models", "other"} <= seen and time.monotonic() < deadline:
        seen |= labels()
        time.sleep(0.1)
    assert {"/v1/models", "other"} <= seen, seen
    assert not any(label.endswith("/") or label.startswith("/nope") for label in seen), seen


def test_a_killed_process_stays_counted_once_and_engine_load_is_shown() -> None:
    sim = start_sim(QWEN3, "vllm")
    # cache_aware follows the engine's KV-event stream, and with it the engine's load records.
    extra = ("--model-path", str(QWEN3), "--workers", "2", "--policy", "cache_aware")
    gateway = start_gateway(sim.address, extra=extra)
    base = f"http://{gateway.address}"
    try:
        pids: dict[int, int] = {}
        for _ in range(40):
            if len(pids) == 2 and min(pids.values()) >= 3:
                break
            with httpx.Client() as client:  # new connections spread over both processes
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                response = client.post(
                    f"{base}/v1/chat/completions", json={**body, "max_tokens": 2}
                )
                assert response.status_code == 200
                pid = client.get(f"{base}/health").json()["pid"]
                pids[pid] = pids.get(pid, 0) + 1
        assert len(pids) == 2
        sent = sum(pids.values())
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)  # its counters are only in its files now
        kv_gauge = re.compile(r"^herdsman_worker_kv_usage_ratio\{[^}]*model=", re.MULTILINE)
        deadline = time.monotonic() + 60
        texts: list[str] = []
        # Six scrapes, and until the engine's load record has arrived (its KV-event stream).
        while time.monotonic() < deadline and (len(texts) < 6 or not kv_gauge.search(texts[-1])):
            try:
                with httpx.Client() as client:
                    texts.append(client.get(f"{base}/metrics", timeout=5).text)
            except httpx.TransportError:
                time.sleep(0.1)  # the slot is being replaced
        label = '{endpoint="/v1/chat/completions",status="200"}'
        assert {_value(t, "herdsman_requests_total", label) for t in texts} == {sent}
        assert len(texts) >= 6
        leftovers = [p for p in texts[-1].splitlines() if f'pid="{victim}"' in p]
        assert not leftovers  # its process metrics went with it
        # What the engine reports about its load, per worker.
        assert kv_gauge.search(texts[-1])
    finally:
        gateway.stop()
        sim.stop()
