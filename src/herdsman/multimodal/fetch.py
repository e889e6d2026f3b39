"""Fetching `image_url` parts: `data:` URLs and http(s) with limits and SSRF protection.

The HTTP client is a small HTTP/1.1 GET over asyncio streams rather than httpx because the SSRF
check must pin the connection to the address it checked: we resolve once, refuse any disallowed
address, then connect to that IP ourselves (TLS still verifies the hostname via SNI), so a DNS
answer that changes between check and connect (rebinding) cannot reach an internal host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .errors import MediaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints: refused even when private networks are allowed, since a
# gateway has no business reading its own credentials on a user's behalf.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS resolver
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    max_redirects: int = 3
    #: allow loopback, private, link-local, CGNAT, ... destinations (tests, trusted deployments)
    allow_private: bool = False
    #: allow the cloud metadata addresses too (implies nothing else)
    allow_metadata: bool = False
    #: networks allowed even though non-public (e.g. ("10.20.0.0/16",) for an internal image
    #: store) without opening every private range
    allowed_networks: tuple[str, ...] = ()
    #: when set, only these hosts (exact, or a subdomain of an entry given as ".example.com")
    allowed_domains: tuple[str, ...] | None = None
    allowed_schemes: tuple[str, ...] = ("http", "https")
    user_agent: str = "herdsman-image-fetch/1"
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


def address_refusal(ip: IPAddress, policy: FetchPolicy) -> str | None:
    """Why `ip` may not be contacted under `policy`, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address dressed as IPv6 must be judged as the IPv4 address it reaches.
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is None and ip in ipaddress.ip_network("64:ff9b::/96"):
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if mapped is not None:
            reason = address_refusal(mapped, policy)
            if reason:
                return reason
    if ip in METADATA_ADDRESSES and not policy.allow_metadata:
        return "a cloud metadata address"
    if policy.allow_private or any(
        ip in ipaddress.ip_network(net, strict=False) for net in policy.allowed_networks
    ):
        return None
    for attr, what in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    ):
        if getattr(ip, attr):
            return what
    if not ip.is_global:
        return "a non-public address"
    return None


def _domain_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("."):
            if host.endswith(entry) or host == entry[1:]:
                return True
        elif host == entry:
            return True
    return False


_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*?),(.*)$", re.DOTALL)


def decode_data_url(url: str, policy: FetchPolicy, param: str | None = None) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise MediaError("malformed data: URL", code="invalid_data_url", param=param)
    mediatype, params, payload = m.group(1).strip().lower(), m.group(2), m.group(3)
    if mediatype and not mediatype.startswith("image/"):
        raise MediaError(
            f"data: URL media type {mediatype!r} is not an image",
            code="invalid_data_url",
            param=param,
        )
    if ";base64" not in params.lower():
        raise MediaError("data: URL must be base64-encoded", code="invalid_data_url", param=param)
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > policy.max_bytes:
        raise MediaError(
            f"image is larger than {policy.max_bytes} bytes", code="image_too_large", param=param
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(
            "data: URL has invalid base64", code="invalid_data_url", param=param
        ) from exc


class ImageFetcher:
    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self._ssl = self.policy.ssl_context or ssl.create_default_context()

    async def fetch(self, url: str, *, param: str | None = None) -> bytes:
        """The image bytes behind an `image_url` (data: or http(s)); MediaError on any refusal."""
        if url[:5].lower() == "data:":
            return decode_data_url(url, self.policy, param)
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._fetch_http(url, param)
        except TimeoutError as exc:
            raise MediaError(
                f"fetching the image took longer than {self.policy.timeout}s",
                code="image_fetch_timeout",
                param=param,
            ) from exc

    async def _fetch_http(self, url: str, param: str | None) -> bytes:
        for _hop in range(self.policy.max_redirects + 1):
            status, headers, reader, writer = await self._request(url, param)
            try:
                if status in _REDIRECTS:
                    location = headers.get("location")
                    if not location:
                        raise MediaError(
                            f"image URL redirected ({status}) without a Location",
                            code="image_fetch_failed",
                            param=param,
                        )
                    url = urljoin(url, location)
                    continue
                if status != 200:
                    raise MediaError(
                        f"image URL answered HTTP {status}",
                        code="image_fetch_failed",
                        param=param,
                    )
                return await self._read_body(headers, reader, param)
            finally:
                writer.close()
        raise MediaError(
            f"image URL redirected more than {self.policy.max_redirects} times",
            code="image_too_many_redirects",
            param=param,
        )

    async def resolve(self, host: str, port: int, param: str | None) -> IPAddress:
        """Resolve once and check every address: a name with any forbidden answer is refused."""
        try:
            ips = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise MediaError(
                    f"image host {host!r} could not be resolved",
                    code="image_fetch_failed",
                    param=param,
                ) from exc
            ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not ips:
            raise MediaError(
                f"image host {host!r} has no address", code="image_fetch_failed", param=param
            )
        for ip in ips:
            reason = address_refusal(ip, self.policy)
            if reason:
                raise MediaError(
                    f"image URL host {host!r} resolves to {reason} ({ip}); refused",
                    code="image_url_forbidden",
                    param=param,
                )
        return ips[0]

    async def _request(
        self, url: str, param: str | None
    ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.policy.allowed_schemes:
            raise MediaError(
                f"image URL scheme {scheme!r} is not allowed",
                code="image_url_forbidden",
                param=param,
            )
        host = parts.hostname
        if not host:
            raise MediaError("image URL has no host", code="invalid_image_url", param=param)
        if parts.username or parts.password:
            raise MediaError(
                "image URL must not carry credentials", code="invalid_image_url", param=param
            )
        if self.policy.allowed_domains is not None and not _domain_allowed(
            host, self.policy.allowed_domains
        ):
            raise MediaError(
                f"image host {host!r} is not in the allowed domains",
                code="image_url_forbidden",
                param=param,
            )
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise MediaError(
                "image URL has a bad port", code="invalid_image_url", param=param
            ) from exc
        ip = await self.resolve(host, port, param)
        try:
            reader, writer = await asyncio.open_connection(
                str(ip),
                port,
                ssl=self._ssl if scheme == "https" else None,
                server_hostname=host if scheme == "https" else None,
                limit=_MAX_HEADER_BYTES,
            )
        except (OSError, ssl.SSLError) as exc:
            raise MediaError(
                f"could not connect to image host {host!r}: {exc}",
                code="image_fetch_failed",
                param=param,
            ) from exc
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            f"User-Agent: {self.policy.user_agent}\r\nAccept: image/*\r\n"
            "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(request.encode("ascii"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            writer.close()
            raise MediaError(
                f"image host {host!r} sent no valid HTTP response",
                code="image_fetch_failed",
                param=param,
            ) from exc
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            writer.close()
            raise MediaError(
                f"image host {host!r} sent a malformed status line",
                code="image_fetch_failed",
                param=param,
            ) from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers, reader, writer

    async def _read_body(
        self, headers: dict[str, str], reader: asyncio.StreamReader, param: str | None
    ) -> bytes:
        limit = self.policy.max_bytes

        def too_large() -> MediaError:
            return MediaError(
                f"image is larger than {limit} bytes", code="image_too_large", param=param
            )

        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = bytearray()
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        return bytes(body)
                    if len(body) + size > limit:
                        raise too_large()
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
            if "content-length" in headers:
                length = int(headers["content-length"])
                if length > limit:
                    raise too_large()
                return await reader.readexactly(length)
            body = bytearray()
            while chunk := await reader.read(65536):
                body += chunk
                if len(body) > limit:
                    raise too_large()
            return bytes(body)
        except MediaError:
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError) as exc:
            raise MediaError(
                "image download was cut short or malformed",
                code="image_fetch_failed",
                param=param,
            ) from exc
