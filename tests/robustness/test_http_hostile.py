"""Slow and hostile clients against a real gateway process (engine-sim behind it, loopback only).

Every attack is cut by a limit or a timeout (small ones, set by flags), and while it runs a
normal client keeps being served. Nothing here asserts a duration: each wait is for a condition,
with a deadline far beyond what it needs.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import httpx
import pytest
import trustme
from tests.conftest import QWEN3, Proc, start_sim, wait_for_line
from tests.http.harness import Client, request, wait_until

from bench import procstat

MODEL = "qwen3"
DEADLINE = 30.0
LIMITS = (
    "--workers", "1", "--no-warm-spare",
    "--http-header-timeout", "1", "--http-body-timeout", "1",
    "--max-body-bytes", "1000000", "--max-url-bytes", "4096", "--max-header-bytes", "16384",
    "--max-pipelined-requests", "4", "--max-concurrent-requests", "4",
)  # fmt: skip
_READY = re.compile(rb"herdsman listening on https?://(\S+):(\d+)")


@dataclass
class Gateway:
    proc: Proc
    port: int
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.process.pid


def _start_gateway(sim: Proc, stderr: Path, *extra: str) -> Gateway:
    argv = [sys.executable, "-m", "herdsman", "serve", "--port", "0", "--log-level", "warning"]
    argv += ["--worker", f"grpc://{sim.address}", "--model-path", str(QWEN3), *extra]
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
    match = wait_for_line(process, _READY, 90)
    proc = Proc(process, f"{match.group(1).decode()}:{match.group(2).decode()}")
    return Gateway(proc, int(match.group(2)), stderr)


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_sim(QWEN3, "vllm", "--ttft-base-ms", "1", "--itl-base-ms", "1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(sim: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = _start_gateway(sim, tmp_path_factory.mktemp("gw") / "stderr.log", *LIMITS)
    yield gw
    gw.proc.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_gateway(
    sim: Proc, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """HTTPS, at most 4 connections, access log on."""
    files = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(files / "key.pem")
    (files / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    gw = _start_gateway(
        sim,
        files / "stderr.log",
        *("--workers", "1", "--no-warm-spare", "--max-connections", "4", "--access-log"),
        *("--tls-cert", str(files / "cert.pem"), "--tls-key", str(files / "key.pem")),
    )
    yield gw
    gw.proc.stop()


def _chat_body(max_tokens: int = 4, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        **extra,
    }


def assert_served(gw: Gateway) -> None:
    """A normal client gets a normal answer."""
    response = httpx.post(
        f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=_chat_body(), timeout=DEADLINE
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


def assert_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    error = body["error"]
    assert error["message"] and error["type"] and "param" in error and "code" in error


def _connect(gw: Gateway) -> Client:
    return Client(gw.port, timeout=DEADLINE)


def _trickle(client: Client, data: bytes) -> bool:
    """Send one byte at a time, a little apart, until the server answers; True if it did."""
    for byte in data:
        if select.select([client.sock], [], [], 0.05)[0]:
            return True
        client.send(bytes([byte]))
    return bool(select.select([client.sock], [], [], DEADLINE)[0])


# -- slowloris ---------------------------------------------------------------------------------


def test_slowloris_headers_are_cut_while_others_are_served(gateway: Gateway) -> None:
    held = [_connect(gateway) for _ in range(20)]
    for client in held:
        client.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-a: ")
    assert_served(gateway)
    for client in held:
        reply = client.reply()
        assert_error(reply.status, reply.json(), 408)
        assert client.closed() == "eof"
    # A client that keeps trickling bytes does not keep its headers' deadline alive.
    trickler = _connect(gateway)
    assert _trickle(trickler, b"GET /v1/models HTTP/1.1\r\n" + b"x-pad: " + b"a" * 2000)
    assert trickler.reply().status == 408
    assert_served(gateway)


def test_slowloris_body_is_cut_while_others_are_served(gateway: Gateway) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n"
    held = [_connect(gateway) for _ in range(10)]
    for client in held:
        client.send(head + b'{"model": ')
    assert_served(gateway)
    for client in held:
        reply = client.reply()
        assert_error(reply.status, reply.json(), 408)
    trickler = _connect(gateway)
    trickler.send(head)
    assert _trickle(trickler, b"x" * 4000)
    assert trickler.reply().status == 408
    assert_served(gateway)


# -- pipelining --------------------------------------------------------------------------------


class _Responses:
    """Counts responses in a byte stream and keeps their bodies (httptools, fast)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())
        self.bodies.append(self._body)
        self._body = b""


def _rss_mb(pid: int) -> float:
    return sum(int(p["rss_kb"]) for p in procstat.tree_rss(pid)) / 1024


def test_pipelining_flood_is_bounded_and_answered_in_order(gateway: Gateway) -> None:
    """A client that pipelines without reading: the gateway stops reading instead of buffering."""
    pad = "p" * 2000  # echoed in each 404's message: answers as large as the requests
    one = len(request("GET", f"/flood/{0:08d}/{pad}"))
    budget = 128 * 1024 * 1024
    before = _rss_mb(gateway.pid)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    # Small fixed buffers on our side: the kernel cannot soak up what the gateway should not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    sent, index, pending = 0, 0, b""
    while sent < budget:
        if not pending:
            pending = request("GET", f"/flood/{index:08d}/{pad}")
            index += 1
        try:
            n = sock.send(pending)
        except BlockingIOError:
            # Stalled: the gateway stopped reading (or is merely slow, then it resumes).
            if not select.select([], [sock], [], 5.0)[1]:
                break
            continue
        sent += n
        pending = pending[n:]
    assert sent < budget, "the gateway read 128 MB of requests nobody was reading answers to"
    grown = _rss_mb(gateway.pid) - before
    assert grown < 64, f"gateway memory grew by {grown:.0f} MB"
    assert_served(gateway)  # while this connection is stalled
    complete = sent // one
    responses = _Responses()
    sock.setblocking(True)
    sock.settimeout(DEADLINE)
    while len(responses.statuses) < complete:
        data = sock.recv(1 << 20)
        assert data, f"closed after {len(responses.statuses)} of {complete} answers"
        responses.parser.feed_data(data)
    for i, (status, body) in enumerate(zip(responses.statuses, responses.bodies, strict=True)):
        assert status == 404 and f"/flood/{i:08d}/".encode() in body
    sock.close()


# -- sizes -------------------------------------------------------------------------------------


def test_oversized_url_is_414(gateway: Gateway) -> None:
    client = _connect(gateway)
    client.send(request("GET", "/v1/models?" + "q" * 10_000))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 414)
    assert_served(gateway)


@pytest.mark.parametrize(
    "headers",
    ["x-big: " + "v" * 20_000 + "\r\n", "".join(f"x-h{i}: v\r\n" for i in range(200))],
    ids=["bytes", "count"],
)
def test_oversized_headers_are_431(gateway: Gateway, headers: str) -> None:
    client = _connect(gateway)
    client.send(request("GET", "/v1/models", headers=headers))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 431)
    assert_served(gateway)


def test_oversized_body_by_content_length_is_413(gateway: Gateway) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{gateway.port}/v1/chat/completions",
        content=b"x" * 3_000_000,
        headers={"content-type": "application/json"},
        timeout=DEADLINE,
    )
    assert_error(response.status_code, response.json(), 413)
    # A client that sends the whole body before reading still reads its answer (no reset).
    client = _connect(gateway)
    client.send(request("POST", "/v1/chat/completions", b"x" * 3_000_000))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 413)
    assert client.closed() == "eof"
    assert_served(gateway)


def test_oversized_chunked_body_is_413_before_it_ends(gateway: Gateway) -> None:
    client = _connect(gateway)
    client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    for _ in range(64):  # 4 MB, four times the limit, and never the last chunk
        if select.select([client.sock], [], [], 0)[0]:
            break
        client.send(chunk)
    reply = client.reply()  # the body never ended: answered on the limit alone
    assert_error(reply.status, reply.json(), 413)
    assert_served(gateway)


def test_expect_continue_with_200mb_content_length_is_413_at_once(gateway: Gateway) -> None:
    client = _connect(gateway)
    client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 209715200\r\nexpect: 100-continue\r\n\r\n"
    )
    reply = client.reply()  # not a 100 Continue, and no body byte was sent
    assert_error(reply.status, reply.json(), 413)
    assert client.closed() == "eof"
    assert_served(gateway)


@pytest.mark.parametrize("depth", [900, 200_000])
def test_deeply_nested_json_is_never_a_5xx(gateway: Gateway, depth: int) -> None:
    """Nesting past the decoder's recursion limit is a 400; just below it, served or a 400."""
    nested = b"[" * depth + b"]" * depth
    body = (
        b'{"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
        b'"chat_template_kwargs": {"x": ' + nested + b"}}"
    )
    response = httpx.post(
        f"http://127.0.0.1:{gateway.port}/v1/chat/completions", content=body, timeout=DEADLINE
    )
    if depth > 1000:
        assert_error(response.status_code, response.json(), 400)
    else:
        assert response.status_code in (200, 400), response.text
    assert_served(gateway)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/tokenize"])
def test_invalid_utf8_in_a_json_string_is_400(gateway: Gateway, path: str) -> None:
    field = b'"messages": [{"role": "user", "content": "caf\xe9 \xff"}]'
    if path != "/v1/chat/completions":
        field = b'"prompt": "caf\xe9 \xff"'
    body = b'{"model": "qwen3", ' + field + b"}"
    response = httpx.post(f"http://127.0.0.1:{gateway.port}{path}", content=body, timeout=DEADLINE)
    assert_error(response.status_code, response.json(), 400)
    assert "UTF-8" in response.json()["error"]["message"]


# -- abrupt resets -----------------------------------------------------------------------------


def test_reset_mid_request_and_mid_stream(gateway: Gateway) -> None:
    """Resets leave nothing behind: each stream's concurrency slot (4 of them) is released."""
    for _ in range(3):
        client = _connect(gateway)
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 900\r\n\r\n{"
        )
        client.reset()
    payload = json.dumps(_chat_body(20_000, stream=True)).encode()
    body = request(
        "POST", "/v1/chat/completions", payload, headers="content-type: application/json\r\n"
    )
    for _ in range(6):  # more than the 4 slots: a leaked slot would starve what follows
        client = _connect(gateway)
        client.send(body)
        client.read_until(b"data: ")  # the stream is running
        client.reset()
    assert_served(gateway)


# -- TLS, connection cap, access log ------------------------------------------------------------


def _trust(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_tls_chat(tls_gateway: Gateway, ca: trustme.CA) -> None:
    base = f"https://127.0.0.1:{tls_gateway.port}"
    with httpx.Client(verify=_trust(ca), timeout=DEADLINE) as http:
        response = http.post(f"{base}/v1/chat/completions", json=_chat_body())
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 4
        with http.stream(
            "POST", f"{base}/v1/chat/completions", json=_chat_body(6, stream=True)
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.read().endswith(b"data: [DONE]\n\n")


def test_connection_cap_answers_503(tls_gateway: Gateway, ca: trustme.CA) -> None:
    trust = _trust(ca)
    held: list[Client] = []

    def hold_one() -> bool:
        # Connections of earlier tests may not be counted out yet: those answers are 503 too.
        client = Client(tls_gateway.port, tls=trust, timeout=DEADLINE)
        client.send(request("GET", "/v1/models"))
        if client.reply().status != 200:
            client.close()
            return False
        held.append(client)
        return True

    for _ in range(4):
        assert wait_until(hold_one, DEADLINE)
    extra = Client(tls_gateway.port, tls=trust, timeout=DEADLINE)
    extra.send(request("GET", "/v1/models"))
    reply = extra.reply()
    assert_error(reply.status, reply.json(), 503)
    for client in held:
        client.close()

    def served() -> bool:
        try:
            with httpx.Client(verify=trust, timeout=DEADLINE) as http:
                url = f"https://127.0.0.1:{tls_gateway.port}/v1/chat/completions"
                return http.post(url, json=_chat_body()).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(served, DEADLINE)


def test_access_log_has_one_line_per_request(tls_gateway: Gateway, ca: trustme.CA) -> None:
    secret = "a-secret-prompt-never-logged"
    payload = json.dumps(_chat_body(messages=[{"role": "user", "content": secret}])).encode()
    client = Client(tls_gateway.port, tls=_trust(ca), timeout=DEADLINE)
    for _ in range(2):
        client.send(request("POST", "/v1/chat/completions", payload))
        assert client.reply().status == 200
    # The client's own port tells its lines from those of earlier tests.
    peer = f"127.0.0.1:{client.sock.getsockname()[1]} "
    # Each line ends with the request's id (X-Request-Id), as its spans and engine request have it.
    line = re.compile(re.escape(peer) + r'"POST /v1/chat/completions" 200 \d+ [\d.]+ms id=\S+$')

    def logged() -> list[str]:
        text = tls_gateway.stderr.read_text(errors="replace")
        return [ln for ln in text.splitlines() if "herdsman.access" in ln and peer in ln]

    assert wait_until(lambda: len(logged()) >= 2, DEADLINE)
    assert len(logged()) == 2 and all(line.search(ln) for ln in logged()), logged()
    assert secret not in tls_gateway.stderr.read_text(errors="replace")


# -- a client that stops reading ---------------------------------------------------------------
def test_a_client_that_stops_reading_is_dropped_and_its_slot_freed(tmp_path: Path) -> None:
    """With every concurrency slot held by streams whose clients read nothing, the send timeout
    drops them (aborting their engine requests) and a normal client is served again."""
    fast = start_sim(
        QWEN3, "vllm", "--ttft-base-ms", "0", "--itl-base-ms", "0", "--itl-per-running-ms", "0",
        "--tokens-per-message", "64",
    )  # fmt: skip
    gw = _start_gateway(
        fast,
        tmp_path / "stderr.log",
        *("--workers", "1", "--no-warm-spare", "--max-concurrent-requests", "2"),
        *("--http-send-timeout", "1"),
    )
    stalled: list[socket.socket] = []
    try:
        body = json.dumps(_chat_body(30000, n=16, stream=True, ignore_eos=True)).encode()
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gw.port))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            stalled.append(sock)  # and never read from again
        # Both slots are taken by clients that read nothing: only the send timeout frees them.
        assert_served(gw)
    finally:
        for sock in stalled:
            sock.close()
        gw.proc.stop()
        fast.stop()
