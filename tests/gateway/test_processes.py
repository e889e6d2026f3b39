"""One gateway process per core: SO_REUSEPORT spreading, restart on death, drain on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import httpx
from tests.conftest import QWEN3, gateway_processes, start_gateway, start_sim
from tests.gateway.test_chat import MODEL, sse_events


def _pids(base_url: str, attempts: int = 60) -> set[int]:
    pids = set()
    for _ in range(attempts):
        # A new connection each time: the kernel picks the process per connection. Connections
        # that were queued on a killed process's socket are reset; clients retry those.
        with httpx.Client() as client, contextlib.suppress(httpx.TransportError):
            pids.add(client.get(f"{base_url}/health").json()["pid"])
    return pids


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _assert_chat_answered(base_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_processes_share_the_port_and_restart() -> None:
    sim = start_sim(QWEN3, "vllm", "--itl-base-ms", "5")
    extra = ("--model-path", str(QWEN3), "--workers", "2", "--warm-spare")
    gateway = start_gateway(sim.address, extra=extra)
    base = f"http://{gateway.address}"
    try:
        pids = _pids(base)
        assert len(pids) == 2
        assert gateway.process.pid not in pids

        # A long stream, on whichever process; then kill the *other* process.
        results: dict[str, object] = {}

        def stream() -> None:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 200,
                "stream": True,
            }
            try:
                with httpx.stream(
                    "POST", f"{base}/v1/chat/completions", json=body, timeout=30
                ) as response:
                    results["events"] = sse_events(response)
            except httpx.TransportError as exc:  # the stream was on the killed process
                results["cut"] = exc

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(0.3)
        victim = pids.pop()
        before_kill = gateway_processes(gateway.process.pid)
        os.kill(victim, signal.SIGKILL)
        # Liveness only: how fast a replacement serves is measured by bench/, not asserted here.
        assert _wait(lambda: len(_pids(base, 10) - {victim}) == 2, timeout=60)
        # The slot went to the warm spare, a process that was already running before the kill.
        replacement = _pids(base, 30) - pids - {victim}
        assert replacement and replacement <= before_kill
        thread.join(30)
        events = results.get("events")
        # Either the stream ran on the survivor and finished, or it ran on the victim and was cut;
        # the survivor's streams are never disturbed, and the gateway answers again at once.
        assert (events is None) != ("cut" not in results)
        if events is not None:
            assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        gateway.stop()
        sim.stop()


def _memory(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's kB figures."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        out[name] = int(value.split()[0])
    return out


def test_processes_share_the_preloaded_tokenizer_and_a_fork_replaces_the_dead() -> None:
    sim = start_sim(QWEN3, "vllm")
    gateway = start_gateway(sim.address, extra=("--model-path", str(QWEN3), "--workers", "2"))
    base = f"http://{gateway.address}"
    try:
        pids = _pids(base)
        assert pids == gateway_processes(gateway.process.pid)  # no spare by default
        for pid in pids:
            # Forked from the fork server that loaded Qwen3's tokenizers (~110 MB of Rust heap):
            # most of each process's memory is those shared pages. A process that loaded its own
            # copies (spawned) has ~85% of its resident memory private.
            memory = _memory(pid)
            private = memory["Private_Clean"] + memory["Private_Dirty"]
            assert private < 0.5 * memory["Rss"], memory
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        # A fresh process forked in its place (liveness only; bench/ measures how fast).
        assert _wait(lambda: len(gateway_processes(gateway.process.pid) - {victim}) == 2, 60)
        replacement = gateway_processes(gateway.process.pid) - pids
        assert len(replacement) == 1 and victim not in replacement
        assert _wait(lambda: replacement <= _pids(base, 10), timeout=60)
        for _ in range(4):
            _assert_chat_answered(base)
    finally:
        gateway.stop()
        sim.stop()


def test_spawned_processes_serve() -> None:
    """--start-method spawn: no fork server; each process imports the serving code itself."""
    sim = start_sim(QWEN3, "vllm")
    extra = ("--model-path", str(QWEN3), "--workers", "1", "--start-method", "spawn")
    gateway = start_gateway(sim.address, extra=extra)
    base = f"http://{gateway.address}"
    try:
        assert gateway_processes(gateway.process.pid) == set()  # none forked by a fork server
        (pid,) = _pids(base, 5)
        assert pid != gateway.process.pid
        _assert_chat_answered(base)
    finally:
        gateway.stop()
        sim.stop()


def test_sigterm_drains_in_flight_streams() -> None:
    sim = start_sim(QWEN3, "vllm", "--itl-base-ms", "10")
    gateway = start_gateway(
        sim.address, extra=("--model-path", str(QWEN3), "--workers", "2", "--drain-timeout", "20")
    )
    base = f"http://{gateway.address}"
    try:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "stream": True,
        }
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            gateway.process.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest
        finals = [line for line in rest if '"finish_reason":"length"' in line]
        assert len(finals) == 1
        assert gateway.process.wait(30) == 0
        # Drained and gone: nobody accepts any more.
        try:
            httpx.get(f"{base}/health", timeout=2)
            raise AssertionError("the gateway still accepts connections after draining")
        except httpx.TransportError:
            pass
    finally:
        gateway.stop()
        sim.stop()


def _metric(base_url: str, name: str, labels: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_processes_share_the_tokenizer_segment_store() -> None:
    """A chat's turns land on either process; the segments encoded by one serve the other."""
    sim = start_sim(QWEN3, "vllm")
    # On: with the fastokens backend (qwen3) the cache is off by default, as it outruns it.
    gateway = start_gateway(
        sim.address,
        extra=("--model-path", str(QWEN3), "--workers", "2", "--tokenizer-cache", "on"),
    )
    base = f"http://{gateway.address}"
    store_dirs = {path for path in os.listdir("/dev/shm") if path.startswith("herdsman-tokcache-")}
    try:
        assert any(d.startswith(f"herdsman-tokcache-{gateway.process.pid}-") for d in store_dirs)
        messages = [{"role": "system", "content": "You are a careful assistant. " * 40}]
        for turn in range(30):
            messages.append({"role": "user", "content": f"Question {turn}: what next?"})
            with httpx.Client() as client:  # a new connection: either process may answer
                reply = client.post(
                    f"{base}/v1/chat/completions",
                    json={"model": MODEL, "messages": messages, "max_tokens": 3},
                    timeout=30,
                ).json()
            messages.append(
                {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}
            )
        shared_hits = _metric(base, "herdsman_tokenizer_cache_hits_total", 'level="l1_shared"')
        local_hits = _metric(base, "herdsman_tokenizer_cache_hits_total", 'level="l1"')
        assert local_hits > 0
        # 30 turns over 2 processes: the second process to see the chat finds the segments the
        # first one stored (chance that one process gets every turn: 2^-29).
        assert shared_hits > 0
    finally:
        gateway.stop()
        sim.stop()
    left = {
        p
        for p in os.listdir("/dev/shm")
        if p.startswith(f"herdsman-tokcache-{gateway.process.pid}-")
    }
    assert not left  # the supervisor removes the store when it stops
