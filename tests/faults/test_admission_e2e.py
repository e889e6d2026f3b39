"""Admission through a real gateway: the concurrency limit holds across gateway processes, over it
requests queue, a full queue or a queue timeout is a 429 with Retry-After, and a client that
leaves the queue or a running request costs the engine nothing more."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.faults.common import chat, engine_active, gateway, log_lines, metric, sim, wait_for

pytestmark = pytest.mark.slow

LONG = chat(max_tokens=3000, stream=True)


class Stream(threading.Thread):
    """A streamed request read in the background until told to stop (then the client leaves).

    It runs on ``client``'s kept-alive connection, so on the process that answered it before.
    """

    def __init__(self, base: str, client: httpx.Client | None = None) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.client = client or httpx.Client()
        self.first = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        url = f"{self.base}/v1/chat/completions"
        with self.client.stream("POST", url, json=LONG, timeout=60) as r:
            for _ in r.iter_lines():
                self.first.set()
                if self.stop.is_set():
                    return


def _client_per_process(base: str, processes: int) -> list[httpx.Client]:
    """One kept-alive connection to each gateway process (the kernel picks per connection)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(200):
        client = httpx.Client(limits=httpx.Limits(max_connections=1))
        pid = client.get(f"{base}/health", timeout=10).json()["pid"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == processes:
            return list(found.values())
    raise AssertionError(f"reached {len(found)} of {processes} processes")


def _raw_post(address: str, body: bytes) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    return sock


def test_the_limit_is_gateway_wide(tmp_path: Path) -> None:
    engine, _ = sim(tmp_path, "engine", "--itl-base-ms", "10")
    gw = gateway(
        engine, flags=("--workers", "2", "--max-concurrent-requests", "2", "--queue-size", "0")
    )
    base = f"http://{gw.address}"
    streams = [Stream(base, client) for client in _client_per_process(base, 2)]
    try:
        for s in streams:
            s.start()
            assert s.first.wait(30)
        # One request in flight in each process: the gateway as a whole is full, so a third
        # request is refused whichever process gets it (per process, each would have room).
        for _ in range(4):
            full = httpx.post(f"{base}/v1/chat/completions", json=chat(max_tokens=2), timeout=30)
            assert full.status_code == 429, full.text
            assert full.headers["retry-after"].isdigit()
            error = full.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        # A slot frees up: requests are served again.
        streams[0].stop.set()
        streams[0].join(30)
        assert wait_for(
            lambda: (
                httpx.post(
                    f"{base}/v1/chat/completions", json=chat(max_tokens=2), timeout=30
                ).status_code
                == 200
            )
        )
    finally:
        for s in streams:
            s.stop.set()
        gw.stop()
        engine.stop()


def test_queue_timeout_is_a_429_and_leaving_the_queue_frees_it(tmp_path: Path) -> None:
    engine, log = sim(tmp_path, "engine", "--itl-base-ms", "10")
    gw = gateway(
        engine,
        flags=("--max-concurrent-requests", "1", "--queue-size", "5", "--queue-timeout", "0.5"),
    )
    base = f"http://{gw.address}"
    holder = Stream(base)
    try:
        holder.start()
        assert holder.first.wait(30)
        timed_out = httpx.post(f"{base}/v1/chat/completions", json=chat(max_tokens=2), timeout=30)
        assert timed_out.status_code == 429
        assert timed_out.json()["error"]["code"] == "queue_timeout"
        assert int(timed_out.headers["retry-after"]) >= 1
        # A client that gives up while queued is forgotten; the engine never sees its request.
        requests_before = len(log_lines(log))
        sock = _raw_post(gw.address, httpx.Request("POST", "/", json=chat()).content)
        assert wait_for(lambda: metric(base, "herdsman_admission_queued") == 1)
        sock.close()
        assert wait_for(lambda: metric(base, "herdsman_admission_queued") == 0)
        assert len(log_lines(log)) == requests_before
        assert engine_active(engine) == 1  # only the request holding the slot
        assert metric(base, "herdsman_admission_rejected_total") == 1
    finally:
        holder.stop.set()
        gw.stop()
        engine.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_mid_generation_gets_its_request_aborted(
    tmp_path: Path, stream: bool
) -> None:
    engine, log = sim(tmp_path, "engine", "--itl-base-ms", "10")
    gw = gateway(engine)
    try:
        body = httpx.Request("POST", "/", json=chat(max_tokens=3000, stream=stream)).content
        sock = _raw_post(gw.address, body)
        assert wait_for(lambda: engine_active(engine) == 1)  # the engine is generating it
        left = time.monotonic()
        sock.close()
        assert wait_for(lambda: any(line.startswith("abort ") for line in log_lines(log)))
        # Reported, not asserted: how soon the engine heard of it.
        print(f"abort reached the engine {1000 * (time.monotonic() - left):.0f} ms after the close")
    finally:
        gw.stop()
        engine.stop()
