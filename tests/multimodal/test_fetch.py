"""Fetching image URLs: limits, redirects and SSRF refusals, against a local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from herdsman.multimodal import FetchPolicy, ImageFetcher, MediaError
from herdsman.multimodal.fetch import address_refusal

PNG = (Path(__file__).parent / "images" / "square.png").read_bytes()

Route = Callable[[str], tuple[int, dict[str, str], bytes]]


class LocalServer:
    """A tiny HTTP/1.1 server on 127.0.0.1; `routes` maps a path to (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        self.requests.append(path)
        if path == "/slow":
            await asyncio.sleep(5)
        status, headers, body = self.routes.get(path, (404, {}, b"missing"))
        lines = [f"HTTP/1.1 {status} X"]
        if "transfer-encoding" not in {k.lower() for k in headers} and "no-length" not in headers:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in headers.items() if k != "no-length"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """Served from its own thread and loop, so the test's loop is a real, separate client."""
    srv = LocalServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def start() -> None:
        srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        srv.port = srv.server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(5)
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def loopback_ok(**kw: object) -> ImageFetcher:
    return ImageFetcher(FetchPolicy(allow_private=True, **kw))  # type: ignore[arg-type]


async def test_fetch_ok(server: LocalServer) -> None:
    server.routes["/a.png"] = (200, {"Content-Type": "image/png"}, PNG)
    assert await loopback_ok().fetch(server.base + "/a.png") == PNG


async def test_chunked_and_close_delimited(server: LocalServer) -> None:
    chunked = b"".join(
        f"{len(PNG[i : i + 1000]):x}\r\n".encode() + PNG[i : i + 1000] + b"\r\n"
        for i in range(0, len(PNG), 1000)
    )
    server.routes["/c"] = (200, {"Transfer-Encoding": "chunked"}, chunked + b"0\r\n\r\n")
    server.routes["/e"] = (200, {"no-length": "1"}, PNG)
    assert await loopback_ok().fetch(server.base + "/c") == PNG
    assert await loopback_ok().fetch(server.base + "/e") == PNG


async def test_loopback_refused_by_default(server: LocalServer) -> None:
    server.routes["/a.png"] = (200, {}, PNG)
    with pytest.raises(MediaError) as e:
        await ImageFetcher().fetch(server.base + "/a.png", param="messages[0].content[1]")
    assert e.value.code == "image_url_forbidden"
    assert e.value.param == "messages[0].content[1]"
    assert server.requests == []  # refused before connecting


async def test_localhost_name_refused() -> None:
    with pytest.raises(MediaError, match="loopback"):
        await ImageFetcher().fetch("http://localhost:9/x.png")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://172.16.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "http://224.0.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://240.0.0.1/x.png",
        # Numeric spellings the resolver accepts; judged by the address they resolve to.
        "http://2130706433/x.png",
        "http://0x7f.0.0.1/x.png",
        "http://127.1/x.png",
        "http://[::ffff:a9fe:a9fe]/latest/",
    ],
)
async def test_private_addresses_refused(url: str) -> None:
    with pytest.raises(MediaError) as e:
        await ImageFetcher().fetch(url)
    assert e.value.code == "image_url_forbidden"


async def test_metadata_refused_even_when_private_allowed() -> None:
    with pytest.raises(MediaError, match="metadata"):
        await loopback_ok().fetch("http://169.254.169.254/latest/meta-data/")
    ip = ipaddress.ip_address("169.254.169.254")
    assert address_refusal(ip, FetchPolicy(allow_private=True, allow_metadata=True)) is None


def test_public_address_allowed() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), FetchPolicy()) is None


async def test_redirect_followed_and_rechecked(server: LocalServer) -> None:
    server.routes["/r1"] = (302, {"Location": "/r2"}, b"")
    server.routes["/r2"] = (301, {"Location": server.base + "/a.png"}, b"")
    server.routes["/a.png"] = (200, {}, PNG)
    assert await loopback_ok().fetch(server.base + "/r1") == PNG
    server.routes["/evil"] = (302, {"Location": "http://169.254.169.254/latest/"}, b"")
    with pytest.raises(MediaError, match="metadata"):
        await loopback_ok().fetch(server.base + "/evil")


async def test_redirect_to_private_refused(server: LocalServer) -> None:
    """Only the loopback server is allowed; its redirect to a private address is refused
    (each hop is resolved and checked again), and nothing is sent to the second host."""
    server.routes["/go"] = (307, {"Location": "http://10.1.2.3/internal.png"}, b"")
    server.routes["/a.png"] = (200, {}, PNG)
    fetcher = ImageFetcher(FetchPolicy(allowed_networks=("127.0.0.0/8",)))
    assert await fetcher.fetch(server.base + "/a.png") == PNG
    with pytest.raises(MediaError) as e:
        await fetcher.fetch(server.base + "/go")
    assert e.value.code == "image_url_forbidden"
    assert "10.1.2.3" in str(e.value) and "private" in str(e.value)
    server.routes["/meta"] = (302, {"Location": "http://169.254.169.254/"}, b"")
    with pytest.raises(MediaError, match="metadata"):
        await fetcher.fetch(server.base + "/meta")


async def test_too_many_redirects(server: LocalServer) -> None:
    server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(MediaError) as e:
        await loopback_ok(max_redirects=2).fetch(server.base + "/loop")
    assert e.value.code == "image_too_many_redirects"
    assert len(server.requests) == 3


async def test_size_limits(server: LocalServer) -> None:
    server.routes["/big"] = (200, {}, PNG)
    server.routes["/bigc"] = (200, {"no-length": "1"}, PNG)
    for path in ("/big", "/bigc"):
        with pytest.raises(MediaError) as e:
            await loopback_ok(max_bytes=1000).fetch(server.base + path)
        assert e.value.code == "image_too_large"


async def test_timeout(server: LocalServer) -> None:
    with pytest.raises(MediaError) as e:
        await loopback_ok(timeout=0.2).fetch(server.base + "/slow")
    assert e.value.code == "image_fetch_timeout"


async def test_http_error_status(server: LocalServer) -> None:
    with pytest.raises(MediaError, match="404"):
        await loopback_ok().fetch(server.base + "/nope")


async def test_domain_allow_list(server: LocalServer) -> None:
    server.routes["/a.png"] = (200, {}, PNG)
    f = loopback_ok(allowed_domains=("images.example.com", ".cdn.example.org"))
    with pytest.raises(MediaError, match="allowed domains"):
        await f.fetch(server.base + "/a.png")
    f2 = loopback_ok(allowed_domains=("127.0.0.1",))
    assert await f2.fetch(server.base + "/a.png") == PNG


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x.png", "file:///etc/passwd", "http://user:pw@example.com/x.png"],
)
async def test_bad_urls(url: str) -> None:
    with pytest.raises(MediaError):
        await ImageFetcher().fetch(url)


async def test_data_urls() -> None:
    f = ImageFetcher()
    b64 = base64.b64encode(PNG).decode()
    assert await f.fetch("data:image/png;base64," + b64) == PNG
    assert await f.fetch("data:;base64," + b64) == PNG
    for bad in (
        "data:image/png," + b64,
        "data:text/plain;base64," + b64,
        "data:image/png;base64,@@@",
        "data:nocomma",
    ):
        with pytest.raises(MediaError) as e:
            await f.fetch(bad)
        assert e.value.code == "invalid_data_url"
    with pytest.raises(MediaError) as e:
        await ImageFetcher(FetchPolicy(max_bytes=100)).fetch("data:image/png;base64," + b64)
    assert e.value.code == "image_too_large"


def test_media_error_is_value_error() -> None:
    assert issubclass(MediaError, ValueError)
