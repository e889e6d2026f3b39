"""The HTTP server's limits, timeouts, ordering and TLS, against a tiny handler on loopback."""

from __future__ import annotations

import logging
import select
import ssl
from collections.abc import Callable, Iterator

import httpx
import pytest
import trustme
from tests.http.harness import Client, ServerThread, request, wait_until

from herdsman.http import ServerLimits

Serve = Callable[..., ServerThread]


@pytest.fixture
def serve() -> Iterator[Serve]:
    started: list[ServerThread] = []

    def start(limits: ServerLimits | None = None, **kwargs: object) -> ServerThread:
        server = ServerThread(limits or ServerLimits(), **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def assert_error(reply_status: int, body: dict, status: int) -> None:
    assert reply_status == status
    error = body["error"]
    assert error["code"] == status and error["message"] and error["type"]


# -- timeouts ----------------------------------------------------------------------------------


def test_half_request_line_is_cut_with_408(serve: Serve) -> None:
    server = serve(ServerLimits(header_timeout=0.3))
    client = Client(server.port)
    client.send(b"GET /ech")
    reply = client.reply()
    assert_error(reply.status, reply.json(), 408)
    assert reply.headers["connection"] == "close"
    assert client.closed() == "eof"


def test_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    server = serve(ServerLimits(header_timeout=0.3))
    client = Client(server.port)
    assert client.closed() == "eof"
    assert client.seen == b""


def test_slow_body_is_cut_with_408(serve: Serve) -> None:
    server = serve(ServerLimits(body_timeout=0.3))
    client = Client(server.port)
    client.send(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789")
    reply = client.reply()
    assert_error(reply.status, reply.json(), 408)
    assert client.closed() == "eof"


def test_slowloris_headers_cut_after_earlier_responses(serve: Serve) -> None:
    """The header deadline runs from a later request's first byte, not only on a new socket."""
    server = serve(ServerLimits(header_timeout=0.5, keepalive_timeout=30))
    client = Client(server.port)
    client.send(request("GET", "/echo"))
    assert client.reply().status == 200
    client.send(b"GET /echo HTTP/1.1\r\nhost: t\r\nx-slow: 1")
    assert client.reply().status == 408


def test_keepalive_timer_is_rearmed_after_every_response(serve: Serve) -> None:
    server = serve(ServerLimits(keepalive_timeout=0.5))
    client = Client(server.port)
    for _ in range(2):
        client.send(request("GET", "/echo"))
        assert client.reply().status == 200
    assert client.closed() == "eof"


def test_keepalive_timer_does_not_cut_a_long_response(serve: Serve) -> None:
    server = serve(ServerLimits(keepalive_timeout=0.5, header_timeout=0.5, body_timeout=0.5))
    streaming = Client(server.port)
    streaming.send(request("GET", "/echo"))
    assert streaming.reply().status == 200
    streaming.send(request("GET", "/stream"))
    assert server.app.stream_started.wait(15)
    # Another connection idles out after the stream began: the stream's connection outlived
    # its own keep-alive and header deadlines by then.
    idle = Client(server.port)
    idle.send(request("GET", "/echo"))
    assert idle.reply().status == 200
    assert idle.closed() == "eof"
    server.release_streams()
    reply = streaming.reply()
    assert reply.status == 200 and reply.body == b"data: first\n\ndata: last\n\n"


# -- connection cap ----------------------------------------------------------------------------


def test_connections_over_the_cap_get_503(serve: Serve) -> None:
    server = serve(ServerLimits(max_connections=2))
    held = [Client(server.port), Client(server.port)]
    for client in held:
        client.send(request("GET", "/echo"))
        assert client.reply().status == 200
    extra = Client(server.port)
    extra.send(request("GET", "/echo"))
    reply = extra.reply()
    assert_error(reply.status, reply.json(), 503)
    assert extra.closed() == "eof"
    held[0].close()
    assert wait_until(lambda: server.connections() < 2)
    again = Client(server.port)
    again.send(request("GET", "/echo"))
    assert again.reply().status == 200


# -- pipelining --------------------------------------------------------------------------------


def test_pipelined_flood_is_bounded_and_answered_in_order(serve: Serve) -> None:
    server = serve(ServerLimits(max_pipelined=4))
    client = Client(server.port)
    flood = b"".join(request("GET", f"/echo?i={i}") for i in range(300))
    client.send(request("GET", "/stream") + flood)
    assert server.app.stream_started.wait(15)

    def paused() -> bool:
        return server.call(lambda: all(c._paused for c in server.server.connections))

    assert wait_until(paused)
    queued = server.call(lambda: max(len(c._pending) for c in server.server.connections))
    assert queued <= 5  # max_pipelined, and at most one more parsed in the same slice
    server.release_streams()
    assert client.reply().body.endswith(b"data: last\n\n")
    for i in range(300):
        reply = client.reply()
        assert reply.status == 200 and reply.json()["query"] == f"i={i}"


def test_streaming_response_notices_a_client_that_leaves(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    client.send(request("GET", "/stream", headers=""))
    assert server.app.stream_started.wait(15)
    client.close()
    assert server.app.stream_cancelled.wait(15)
    assert wait_until(lambda: server.call(lambda: list(server.app.on_close_calls)) == ["stream"])


def test_on_close_once_however_the_stream_ends(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    server.release_streams()
    client.send(request("GET", "/stream?done"))
    assert client.reply().body == b"data: first\n\ndata: last\n\n"
    client.send(request("GET", "/fail-stream"))
    # A stream that fails after its head is cut: the body is left unterminated.
    assert client.closed() in ("eof", "reset")
    assert wait_until(lambda: len(server.app.on_close_calls) == 2)
    assert sorted(server.app.on_close_calls) == ["done", "fail-stream"]


def test_a_body_writer_writes_while_the_iterator_waits_and_dies_with_its_body(
    serve: Serve,
) -> None:
    """StreamingResponse.on_start's writer (the push path's): its chunks go out in the body
    while the iterator waits; once that body ended it writes nothing, so nothing of it can land
    in the next response on the connection."""
    server = serve()
    client = Client(server.port)
    client.send(request("GET", "/stream?push"))
    assert server.app.stream_started.wait(15)
    writer = server.call(lambda: server.app.writers[0])
    assert server.call(writer.body_ready)
    server.call(lambda: writer.write_body(b"data: pushed\n\n"))
    server.release_streams()
    assert client.reply().body == b"data: first\n\ndata: pushed\n\ndata: last\n\n"
    assert wait_until(lambda: server.call(lambda: list(server.app.on_close_calls)) == ["push"])
    assert not server.call(writer.body_ready)
    server.call(lambda: writer.write_body(b"data: stale\n\n"))
    client.send(request("GET", "/echo"))
    reply = client.reply()
    assert reply.status == 200 and reply.json()["path"] == "/echo"
    assert b"stale" not in client.seen


# -- sizes -------------------------------------------------------------------------------------


def test_long_url_is_414(serve: Serve) -> None:
    server = serve(ServerLimits(max_url_bytes=1000))
    client = Client(server.port)
    client.send(request("GET", "/echo?" + "a" * 2000))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 414)
    assert client.closed() == "eof"


@pytest.mark.parametrize(
    "headers",
    [
        "".join(f"x-h{i}: {'v' * 100}\r\n" for i in range(100)),  # 10 kB of headers
        "".join(f"x-h{i}: 1\r\n" for i in range(60)),  # too many
        "x-big: " + "v" * 50_000 + "\r\n",  # one value larger than the whole budget
    ],
    ids=["bytes", "count", "one-value"],
)
def test_oversized_headers_are_431(serve: Serve, headers: str) -> None:
    server = serve(ServerLimits(max_header_bytes=8000, max_headers=50))
    client = Client(server.port)
    client.send(request("GET", "/echo", headers=headers))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 431)
    assert client.closed() == "eof"


def test_header_value_that_never_ends_is_431(serve: Serve) -> None:
    """httptools keeps a header value until it ends: the raw-byte budget bounds it."""
    server = serve(ServerLimits(max_header_bytes=8000, max_url_bytes=1000))
    client = Client(server.port)
    client.send(b"GET /echo HTTP/1.1\r\nx-big: ")
    _send_until_answered(client, b"v" * 4096, 200)  # 800 kB, far past the budget (~10 kB)
    reply = client.reply()  # the header never ended: answered on the budget alone
    assert_error(reply.status, reply.json(), 431)


def _send_until_answered(client: Client, data: bytes, times: int) -> None:
    for _ in range(times):
        if select.select([client.sock], [], [], 0)[0]:
            return  # the server answered already
        client.send(data)


def test_content_length_over_the_limit_is_413_before_the_body(serve: Serve) -> None:
    server = serve(ServerLimits(max_body_bytes=1000))
    client = Client(server.port)
    client.send(
        b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 200000000\r\n"
        b"expect: 100-continue\r\n\r\n"
    )
    reply = client.reply()  # no 100 Continue first: the 413 is the answer
    assert_error(reply.status, reply.json(), 413)
    assert reply.headers["connection"] == "close"
    assert client.closed() == "eof"


def test_chunked_body_over_the_limit_is_413_while_it_streams(serve: Serve) -> None:
    server = serve(ServerLimits(max_body_bytes=100_000))
    client = Client(server.port)
    client.send(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    _send_until_answered(client, chunk, 100)  # 1.6 MB, and never the terminating chunk
    reply = client.reply()  # the body never ended: answered on the limit alone
    assert_error(reply.status, reply.json(), 413)


def test_oversized_body_sent_whole_still_reads_its_413(serve: Serve) -> None:
    """Lingering close: the client's unread upload must not turn the answer into a reset."""
    server = serve(ServerLimits(max_body_bytes=1000))
    client = Client(server.port)
    client.send(request("POST", "/echo", body=b"x" * 2_000_000))
    reply = client.reply()
    assert_error(reply.status, reply.json(), 413)
    assert client.closed() == "eof"


def test_server_keeps_serving_after_rejections(serve: Serve) -> None:
    server = serve(ServerLimits(max_body_bytes=1000, max_url_bytes=100))
    bad_requests = [request("POST", "/echo", b"x" * 5000), request("GET", "/" + "a" * 500)]
    for bad in [*bad_requests, b"\x00\r\n"]:
        client = Client(server.port)
        client.send(bad)
        assert client.reply().status >= 400
    client = Client(server.port)
    client.send(request("POST", "/echo", b"{}"))
    assert client.reply().json()["body_bytes"] == 2


# -- ordering ----------------------------------------------------------------------------------


def _body_phase(server: ServerThread) -> bool:
    from herdsman.http.connection import _BODY

    return server.call(lambda: any(c._phase == _BODY for c in server.server.connections))


def test_100_continue_waits_for_the_response_before_it(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    client.send(
        request("GET", "/stream")
        + b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
    )
    assert server.app.stream_started.wait(15)
    assert wait_until(lambda: _body_phase(server))
    server.release_streams()
    first = client.reply()
    assert first.body == b"data: first\n\ndata: last\n\n"
    assert client.reply().status == 100
    client.send(b"{}")
    assert client.reply().json()["body_bytes"] == 2
    # In bytes on the wire: the stream's last chunk, then the interim response.
    assert client.seen.index(b"0\r\n\r\n") < client.seen.index(b"HTTP/1.1 100 Continue")


def test_100_continue_is_sent_at_once_on_an_idle_connection(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    client.send(request("POST", "/echo", headers="expect: 100-continue\r\ncontent-length: 2\r\n"))
    assert client.reply().status == 100
    client.send(b"{}")
    assert client.reply().json()["body_bytes"] == 2


def test_parse_error_waits_for_the_response_before_it(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    client.send(request("GET", "/stream") + b"NOT HTTP AT ALL\r\n\r\n")
    assert server.app.stream_started.wait(15)
    server.release_streams()
    assert client.reply().body == b"data: first\n\ndata: last\n\n"
    reply = client.reply()
    assert_error(reply.status, reply.json(), 400)
    assert client.closed() == "eof"


def test_upgrade_request_is_answered_as_http1_then_closed(serve: Serve) -> None:
    server = serve()
    client = Client(server.port)
    client.send(request("GET", "/echo", headers="upgrade: h2c\r\nconnection: upgrade\r\n"))
    assert client.reply().status == 200
    assert client.closed() == "eof"


# -- TLS and access log ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def test_tls_request(serve: Serve, ca: trustme.CA) -> None:
    server = serve(ssl=_server_tls(ca))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    with httpx.Client(verify=trust, timeout=15) as http:
        reply = http.post(f"https://127.0.0.1:{server.port}/echo", content=b"{}")
        assert reply.status_code == 200 and reply.json()["body_bytes"] == 2
        with http.stream("GET", f"https://127.0.0.1:{server.port}/stream") as streamed:
            assert server.app.stream_started.wait(15)
            server.release_streams()
            assert streamed.read() == b"data: first\n\ndata: last\n\n"


def test_tls_handshake_is_under_the_header_timeout(serve: Serve, ca: trustme.CA) -> None:
    server = serve(ServerLimits(header_timeout=0.3), ssl=_server_tls(ca))
    client = Client(server.port)  # plain TCP: never sends a ClientHello
    assert client.closed() in ("eof", "reset")
    assert client.seen == b""


def test_access_log_line_per_request(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="herdsman.access")
    server = serve(ServerLimits(max_body_bytes=100), access_log=True)
    client = Client(server.port)
    client.send(request("POST", "/id?q=1", b'{"secret": "do-not-log"}'))
    reply = client.reply()
    client.send(request("POST", "/echo", b"x" * 500))
    assert client.reply().status == 413
    assert wait_until(lambda: len(caplog.records) >= 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "herdsman.access"]
    assert len(lines) == 2
    peer = f"127.0.0.1:{client.sock.getsockname()[1]}"
    assert lines[0].startswith(f'{peer} "POST /id" 200 {len(reply.body)} ')
    assert lines[0].endswith(" id=req-42") and "ms" in lines[0]
    assert lines[1].startswith(f'{peer} "POST /echo" 413 0 ')
    assert not any("do-not-log" in line for line in lines)


def test_access_log_is_off_by_default(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="herdsman.access")
    server = serve()
    client = Client(server.port)
    client.send(request("GET", "/echo"))
    assert client.reply().status == 200
    assert not [r for r in caplog.records if r.name == "herdsman.access"]
