"""A fleet behind one gateway: several models, workers added and removed at run time through the
admin API (every gateway process sees a change before the call returns), workers that are not
ready yet waited for, and gateway processes that route the same prefix alike."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tests.conftest import _GATEWAY_READY, QWEN3, Proc, start_sim, wait_for_line
from tests.faults.common import wait_for

pytestmark = pytest.mark.slow

FAST = ("--ttft-base-ms", "1", "--prefill-ms-per-1k", "0", "--itl-base-ms", "1")


def sim(text: str, *flags: str, name: str = "qwen3", port: int = 0) -> Proc:
    extra = [*FAST, "--response-text", text, "--served-model-name", name, *flags]
    if port:
        extra += ["--port", str(port)]
    return start_sim(QWEN3, "vllm", *extra)


def gateway(*urls: str, flags: tuple[str, ...] = (), wait: bool = True) -> Proc:
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--log-level", "warning"]
    argv += ["--model-path", str(QWEN3), "--no-warm-spare", *flags]
    for url in urls:
        argv += ["--worker", url]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    if not wait:
        return Proc(process, "")
    match = wait_for_line(process, _GATEWAY_READY, 120)
    return Proc(process, f"{match.group(1).decode()}:{match.group(2).decode()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer(base: str, model: str, **extra: object) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def per_process(base: str, processes: int) -> list[httpx.Client]:
    """A kept-alive connection to each gateway process."""
    found: dict[int, httpx.Client] = {}
    for _ in range(200):
        client = httpx.Client(limits=httpx.Limits(max_connections=1), timeout=30)
        pid = client.get(f"{base}/health").json()["pid"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == processes:
            return list(found.values())
    raise AssertionError("could not reach every process")


def test_several_models_each_with_its_workers(tmp_path: Path) -> None:
    a1, a2 = sim("from a, first", name="model-a"), sim("from a, second", name="model-a")
    b = sim("from b", name="model-b")
    gw = gateway(*(f"grpc://{s.address}" for s in (a1, a2, b)), flags=("--workers", "1"))
    base = f"http://{gw.address}"
    try:
        listed = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
        assert sorted(card["id"] for card in listed) == ["model-a", "model-b"]
        assert {answer(base, "model-a") for _ in range(4)} == {"from a, first", "from a, second"}
        assert {answer(base, "model-b") for _ in range(3)} == {"from b"}
        missing = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "model-c", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert missing.status_code == 404
        assert "model-a, model-b" in missing.json()["error"]["message"]
        workers = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
        assert sorted(w["model"] for w in workers) == ["model-a", "model-a", "model-b"]
        # Tokenizing needs to know which model when there are several.
        assert httpx.post(f"{base}/v1/tokenize", json={"prompt": "x"}).status_code == 404
        ok = httpx.post(f"{base}/v1/tokenize", json={"prompt": "x", "model": "model-b"})
        assert ok.status_code == 200 and ok.json()["count"] >= 1
    finally:
        gw.stop()
        for s in (a1, a2, b):
            s.stop()


def test_workers_added_and_removed_at_run_time_lose_no_request(tmp_path: Path) -> None:
    first, second = sim("first"), sim("second")
    gw = gateway(f"grpc://{first.address}", flags=("--workers", "2"))
    base = f"http://{gw.address}"
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]}
                r = client.post(f"{base}/v1/chat/completions", json=body)
                if r.status_code == 200:
                    answers.append(r.json()["choices"][0]["message"]["content"])
                else:
                    failures.append(r.text)

    clients = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in clients:
            t.start()
        added = httpx.post(f"{base}/workers", json={"url": f"grpc://{second.address}"}, timeout=120)
        assert added.status_code == 200, added.text
        [new_id] = added.json()["ids"]
        # Every process has it the moment the call returns.
        for client in per_process(base, 2):
            ids = {w["id"] for w in client.get(f"{base}/workers").json()["workers"]}
            assert new_id in ids
            assert client.get(f"{base}/workers/{new_id}").json()["url"].endswith(second.address)
        assert wait_for(lambda: "second" in answers[-20:])
        first_id = next(
            w["id"]
            for w in httpx.get(f"{base}/workers").json()["workers"]
            if w["url"].endswith(first.address)
        )
        removed = httpx.delete(f"{base}/workers/{first_id}", timeout=120)
        assert removed.status_code == 200, removed.text
        for client in per_process(base, 2):
            assert client.get(f"{base}/workers/{first_id}").status_code == 404
        seen = len(answers)
        assert wait_for(lambda: len(answers) > seen + 20)
        assert set(answers[seen + 5 :]) == {"second"}  # the removed worker gets nothing new
        stop.set()
        for t in clients:
            t.join(60)
        assert not failures, failures[:3]
        assert httpx.get(f"{base}/workers/nope").status_code == 404
        bad = httpx.post(f"{base}/workers", json={"url": "http://x"})
        assert bad.status_code == 400
    finally:
        stop.set()
        gw.stop()
        first.stop()
        second.stop()


def test_a_worker_that_is_not_ready_yet_is_waited_for(tmp_path: Path) -> None:
    early = sim("early")
    late_port = free_port()
    # The gateway starts with a worker whose engine is not listening yet (still loading).
    gw = gateway(f"grpc://{early.address}", f"grpc://127.0.0.1:{late_port}")
    base = f"http://{gw.address}"
    late: Proc | None = None
    try:
        assert {answer(base, "qwen3") for _ in range(3)} == {"early"}
        states = {w["url"]: w["status"] for w in httpx.get(f"{base}/workers").json()["workers"]}
        assert states[f"grpc://127.0.0.1:{late_port}"] == "pending"
        late = sim("late", port=late_port)
        assert wait_for(lambda: "late" in {answer(base, "qwen3") for _ in range(4)}, 60)
        # Added by the admin API before its engine answers: 202, then serving once it does.
        later_port = free_port()
        pending = httpx.post(
            f"{base}/workers", json={"url": f"grpc://127.0.0.1:{later_port}", "wait": 0.5}
        )
        assert pending.status_code == 202 and pending.json()["status"] == "pending"
        later = sim("later", port=later_port)
        try:
            assert wait_for(lambda: "later" in {answer(base, "qwen3") for _ in range(6)}, 60)
        finally:
            later.stop()
    finally:
        gw.stop()
        early.stop()
        if late is not None:
            late.stop()


def test_a_gateway_whose_only_worker_is_loading_starts_when_it_answers() -> None:
    port = free_port()
    gw = gateway(f"grpc://127.0.0.1:{port}", wait=False)
    engine = sim("finally", port=port)  # starts after the gateway, which keeps probing
    try:
        match = wait_for_line(gw.process, _GATEWAY_READY, 120)
        base = f"http://{match.group(1).decode()}:{match.group(2).decode()}"
        assert answer(base, "qwen3") == "finally"
    finally:
        gw.stop()
        engine.stop()


def test_processes_route_the_same_prefix_alike() -> None:
    engines = [sim(f"engine {i}") for i in range(4)]
    gw = gateway(
        *(f"grpc://{e.address}" for e in engines),
        flags=("--workers", "2", "--policy", "prefix_hash", "--prefix-hash-tokens", "32"),
    )
    base = f"http://{gw.address}"
    try:
        clients = per_process(base, 2)
        for topic in ("alpha", "beta", "gamma", "delta", "epsilon"):
            system = f"You are the {topic} assistant. " * 20
            body = {
                "model": "qwen3",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "question"},
                ],
            }
            seen = {
                c.post(f"{base}/v1/chat/completions", json=body).json()["choices"][0]["message"][
                    "content"
                ]
                for c in clients
                for _ in range(2)
            }
            assert len(seen) == 1, (topic, seen)
    finally:
        gw.stop()
        for e in engines:
            e.stop()


def _turn(client: httpx.Client, base: str, messages: list[dict[str, str]]) -> tuple[str, int]:
    """One chat turn: which engine answered, and how many prompt tokens it had cached."""
    body = {"model": "qwen3", "messages": messages, "max_tokens": 8}
    response = client.post(f"{base}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    details = data["usage"].get("prompt_tokens_details") or {}
    return data["choices"][0]["message"]["content"], details.get("cached_tokens", 0)


def _cursors(client: httpx.Client, base: str) -> dict[str, object]:
    workers = client.get(f"{base}/workers").json()["workers"]
    return {w["id"]: (w.get("kv_cache") or {}).get("last_sequence") for w in workers}


@pytest.mark.parametrize("events", [True, False], ids=["kv-events", "approximate"])
def test_cache_aware_keeps_conversations_where_their_prefix_is(events: bool) -> None:
    flags = ("--block-size", "16") if events else ("--block-size", "16", "--no-kv-events")
    engines = [sim(f"engine {i}", *flags) for i in range(3)]
    # Approximate entries are this process's own record: one process, so that it sees all.
    processes = 2 if events else 1
    gw = gateway(
        *(f"grpc://{e.address}" for e in engines),
        flags=("--workers", str(processes), "--policy", "cache_aware"),
    )
    base = f"http://{gw.address}"
    try:
        clients = per_process(base, processes)
        conversations: list[list[dict[str, str]]] = []
        served: list[set[str]] = []
        for c in range(6):
            system = f"You are assistant number {c}, topic {c * 7919}. " * 30
            messages = [{"role": "system", "content": system}]
            client = clients[c % processes]  # a client keeps its connection: one process
            engines_seen: set[str] = set()
            for turn in range(3):
                messages.append({"role": "user", "content": f"question {turn} of {c}"})
                engine, cached = _turn(client, base, messages)
                engines_seen.add(engine)
                if turn:
                    # The engine's own account: the conversation's prefix was in its cache.
                    assert cached >= 16 * 20, (c, turn, cached)
                messages.append({"role": "assistant", "content": engine})
            served.append(engines_seen)
            conversations.append(messages)
        assert all(len(s) == 1 for s in served), served  # every turn where the prefix was
        assert len(set().union(*served)) >= 2  # and the conversations spread

        if events:
            # Every process reads the same streams: once both have applied the same events
            # (None: an engine that published none), they send a conversation's next turn to
            # the same engine.
            def agreed() -> bool:
                views = [_cursors(c, base) for c in clients]
                return views[0] == views[1]

            assert wait_for(agreed, 30), [_cursors(c, base) for c in clients]
            for messages, engines_seen in zip(conversations, served, strict=True):
                messages.append({"role": "user", "content": "one more"})
                answers = {_turn(c, base, messages)[0] for c in clients}
                assert answers == engines_seen
    finally:
        gw.stop()
        for e in engines:
            e.stop()


def test_data_parallel_ranks_are_workers_each_with_its_cache() -> None:
    engine = sim("dp engine", "--dp-size", "2", "--block-size", "16")
    gw = gateway(f"grpc://{engine.address}", flags=("--policy", "cache_aware"))
    base = f"http://{gw.address}"
    try:
        listed = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
        assert sorted(w["dp_rank"] for w in listed) == [0, 1]
        assert len({w["id"] for w in listed}) == 2
        client = httpx.Client(timeout=30)
        for c in range(4):
            messages = [{"role": "system", "content": f"Rank test {c}, topic {c * 31}. " * 30}]
            for turn in range(3):
                messages.append({"role": "user", "content": f"question {turn}"})
                _, cached = _turn(client, base, messages)
                if turn:
                    # Ranks cache apart: a hit means the turn ran on the rank of the last one.
                    assert cached >= 16 * 12, (c, turn, cached)
                messages.append({"role": "assistant", "content": "dp engine"})
        ranks = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
        assert all(w["kv_cache"]["stream"] == "events" for w in ranks), ranks
        assert sum(w["kv_cache"]["blocks"] for w in ranks) > 0, ranks
    finally:
        gw.stop()
        engine.stop()
