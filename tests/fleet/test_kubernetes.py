"""Operating herdsman on Kubernetes and as several replicas: workers discovered from pods (against
the recorded-watch API server of tests/fleet/kube_api.py, with real engine-sims as the pods),
/readiness and /liveness, a SIGTERM drain, and the worker list shared by two gateways through a
real Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tests.conftest import _GATEWAY_READY, QWEN3, Proc, wait_for_line
from tests.faults.common import wait_for
from tests.fleet.kube_api import KubeApi, pod
from tests.fleet.test_fleet import answer, sim

from herdsman.discovery import DiscoveryConfig, parse_selector, pod_target

pytestmark = pytest.mark.slow

SELECTOR = "app=vllm,tier=gpu"


def gateway(*flags: str, processes: int = 2) -> Proc:
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--log-level", "warning"]
    argv += ["--model-path", str(QWEN3), "--no-warm-spare", "--workers", str(processes), *flags]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    match = wait_for_line(process, _GATEWAY_READY, 120)
    return Proc(process, f"{match.group(1).decode()}:{match.group(2).decode()}")


def worker_urls(base: str) -> set[str]:
    return {w["url"] for w in httpx.get(f"{base}/workers", timeout=10).json()["workers"]}


def port_of(proc: Proc) -> int:
    return int(proc.address.rpartition(":")[2])


# -- pods as workers (no server) -------------------------------------------------------------------
def test_a_pod_is_a_worker_once_running_and_ready() -> None:
    config = DiscoveryConfig(selector=SELECTOR, port="grpc")
    assert pod_target(pod("a", 7001), config).url == "grpc://127.0.0.1:7001"
    assert pod_target(pod("a", 7001, ready=False), config) is None
    deleting = pod("a", 7001)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert pod_target(deleting, config) is None
    pending = pod("a", 7001)
    pending["status"]["phase"] = "Pending"
    assert pod_target(pending, config) is None
    # A number, a named container port, and the pod's own annotation.
    assert pod_target(pod("a", 7001), DiscoveryConfig(port="9000")).url.endswith(":9000")
    noted = pod("a", 7001, annotations={"herdsman.io/port": "7100"})
    assert pod_target(noted, config).url.endswith(":7100")
    assert pod_target(pod("a", 7001), DiscoveryConfig(port="http")) is None
    v6 = pod("a", 7001)
    v6["status"]["podIP"] = "fd00::5"
    assert pod_target(v6, config).url == "grpc://[fd00::5]:7001"


def test_roles_come_from_selectors_or_the_role_label() -> None:
    labels = {"app": "vllm", "herdsman.io/role": "prefill", "herdsman.io/bootstrap-port": "8998"}
    target = pod_target(pod("p", 7001, labels=labels), DiscoveryConfig(port="grpc"))
    assert (target.role, target.bootstrap_port) == ("prefill", 8998)
    config = DiscoveryConfig(
        port="grpc", prefill_selector="stage=prefill", decode_selector="stage=decode"
    )
    decode = pod_target(pod("d", 7002, labels={"app": "vllm", "stage": "decode"}), config)
    assert (decode.role, decode.bootstrap_port) == ("decode", None)
    noted = pod(
        "p",
        7003,
        labels={"stage": "prefill"},
        annotations={"herdsman.io/bootstrap-port": "9100"},
    )
    assert pod_target(noted, config).bootstrap_port == 9100
    assert pod_target(pod("r", 7004), config).role == "regular"
    assert parse_selector("app=vllm, tier==gpu,gpu") == {"app": "vllm", "tier": "gpu", "gpu": None}
    with pytest.raises(ValueError):
        parse_selector("app!=vllm")


# -- discovery against the recorded-watch API server -------------------------------------------
def test_pods_followed_through_ready_unready_deleted_and_410(tmp_path: Path) -> None:
    one, two = sim("from one"), sim("from two")
    api = KubeApi()
    api.start()
    gw: Proc | None = None
    try:
        api.put(pod("engine-one", port_of(one)))
        api.put(pod("engine-two", port_of(two), ready=False))
        api.put(pod("other", port_of(two), labels={"app": "web"}))  # not selected
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        gw = gateway(
            "--service-discovery",
            "--selector",
            SELECTOR,
            "--discovery-namespace",
            "herd",
            "--discovery-port",
            "grpc",
            "--discovery-kubeconfig",
            str(kubeconfig),
        )
        base = f"http://{gw.address}"
        url_one, url_two = f"grpc://127.0.0.1:{port_of(one)}", f"grpc://127.0.0.1:{port_of(two)}"
        assert api.lists == [SELECTOR]
        assert worker_urls(base) == {url_one}
        assert answer(base, "qwen3") == "from one"
        assert httpx.get(f"{base}/readiness").status_code == 200

        # The second pod becomes Ready: a worker of every process, serving.
        api.put(pod("engine-two", port_of(two)))
        assert wait_for(lambda: worker_urls(base) == {url_one, url_two}, 60)
        assert wait_for(lambda: answer(base, "qwen3") == "from two", 30)

        # The first loses readiness: it serves no more.
        api.put(pod("engine-one", port_of(one), ready=False))
        assert wait_for(lambda: worker_urls(base) == {url_two}, 60)
        assert {answer(base, "qwen3") for _ in range(4)} == {"from two"}

        # The events are compacted away while the gateway's watch is down: its next watch is
        # answered 410 Gone, it lists again and finds what changed meanwhile.
        api.hold()
        api.put(pod("engine-one", port_of(one)))
        api.delete("engine-two")
        api.compact()
        assert wait_for(lambda: api.gone >= 1 and len(api.lists) >= 2, 60)
        assert wait_for(lambda: worker_urls(base) == {url_one}, 60)
        assert {answer(base, "qwen3") for _ in range(4)} == {"from one"}
        # Watches resume from the version last seen (never from scratch).
        assert all(version for version in api.watches)

        # Deleted: no worker left, and readiness says so.
        api.delete("engine-one")
        assert wait_for(lambda: worker_urls(base) == set(), 60)
        ready = httpx.get(f"{base}/readiness")
        assert ready.status_code == 503 and ready.json()["reason"] == "no healthy worker"
        assert httpx.get(f"{base}/liveness").status_code == 200
    finally:
        if gw is not None:
            gw.stop()
        api.stop()
        one.stop()
        two.stop()


# -- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_drains_a_stream_in_flight_and_exits_0(tmp_path: Path) -> None:
    slow = sim("a b c d e f g h i j k l m n o p", "--itl-base-ms", "150")
    gw = gateway("--worker", f"grpc://{slow.address}", "--shutdown-timeout", "20")
    base = f"http://{gw.address}"
    chunks: list[str] = []
    first = threading.Event()
    finished = threading.Event()

    def stream() -> None:
        body = {
            "model": "qwen3",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        chunks.append(delta)
                        first.set()
                elif line == "data: [DONE]":
                    finished.set()

    try:
        assert httpx.get(f"{base}/readiness").status_code == 200
        client = threading.Thread(target=stream)
        client.start()
        assert first.wait(30)
        gw.process.send_signal(signal.SIGTERM)

        def not_ready() -> bool:
            try:
                return httpx.get(f"{base}/readiness", timeout=2).status_code == 503
            except httpx.TransportError:
                return True  # the listener is closed: no new request is taken either

        assert wait_for(not_ready, 2)
        assert not finished.is_set()
        client.join(60)
        assert finished.is_set()
        assert "".join(chunks).split() == list("abcdefghijklmnop")
        assert gw.process.wait(30) == 0
    finally:
        gw.stop()
        slow.stop()


# -- several replicas ------------------------------------------------------------------------------
def test_two_replicas_share_their_workers_through_redis(redis_url: str) -> None:
    first, second, third = sim("first"), sim("second"), sim("third")
    url = redis_url.rstrip("/") + "/3"  # a database of its own
    import redis

    redis.Redis.from_url(url).flushdb()
    a = gateway("--worker", f"grpc://{first.address}", "--state-url", url, processes=1)
    b: Proc | None = None
    c: Proc | None = None
    try:
        base_a = f"http://{a.address}"
        b = gateway("--worker", f"grpc://{first.address}", "--state-url", url, processes=1)
        base_b = f"http://{b.address}"
        added = httpx.post(
            f"{base_a}/workers", json={"url": f"grpc://{second.address}"}, timeout=120
        )
        assert added.status_code == 200, added.text
        assert wait_for(lambda: f"grpc://{second.address}" in worker_urls(base_b), 60)
        assert wait_for(lambda: answer(base_b, "qwen3") == "second", 30)

        # Removed on B: gone from A too.
        [second_id] = [
            w["id"]
            for w in httpx.get(f"{base_b}/workers").json()["workers"]
            if w["url"] == f"grpc://{second.address}"
        ]
        assert httpx.delete(f"{base_b}/workers/{second_id}", timeout=120).status_code == 200
        assert wait_for(lambda: f"grpc://{second.address}" not in worker_urls(base_a), 60)

        # A replica started later gets the workers added before it.
        assert httpx.post(
            f"{base_a}/workers", json={"url": f"grpc://{third.address}"}, timeout=120
        ).is_success
        c = gateway("--state-url", url, processes=1)
        assert wait_for(lambda: worker_urls(f"http://{c.address}") == {f"grpc://{third.address}"})
        assert answer(f"http://{c.address}", "qwen3") == "third"
    finally:
        for proc in (a, b, c):
            if proc is not None:
                proc.stop()
        for s in (first, second, third):
            s.stop()


def test_a_stream_still_running_at_the_shutdown_deadline_is_aborted(tmp_path: Path) -> None:
    aborts = tmp_path / "aborts.log"
    words = " ".join(f"w{i}" for i in range(200))
    slow = sim(words, "--itl-base-ms", "200", "--abort-log", str(aborts))
    gw = gateway("--worker", f"grpc://{slow.address}", "--shutdown-timeout", "1", processes=1)
    base = f"http://{gw.address}"
    got: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        try:
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    got.append(line)
                    first.set()
        except httpx.TransportError:
            got.append("<cut>")

    try:
        client = threading.Thread(target=stream)
        client.start()
        assert first.wait(30)
        gw.process.send_signal(signal.SIGTERM)
        client.join(30)
        assert "data: [DONE]" not in got  # cut at the deadline, not run to its end
        assert gw.process.wait(30) == 0
        # The engine was told: an Abort RPC for the request, sent before the engines closed.
        assert any(line.startswith("abort ") for line in aborts.read_text().splitlines())
    finally:
        gw.stop()
        slow.stop()
