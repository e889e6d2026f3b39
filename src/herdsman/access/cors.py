"""CORS for browser clients (``--cors-allowed-origins``: a comma list of origins, or ``*``).

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is
answered 204 with the methods and headers the APIs use (the ones the browser asks for included,
so SDKs' own headers pass); one from another origin gets a 403 without CORS headers. Every
response to an allowed origin, streams and errors included, carries
``Access-Control-Allow-Origin`` (``*`` when every origin is allowed, else the origin itself,
with ``Vary: Origin``) and exposes ``Retry-After``. Nothing changes when CORS is not configured.
No credentials mode: keys travel in headers, not cookies.
"""

from __future__ import annotations

from herdsman.http import Response, StreamingResponse

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    "authorization",
    "x-api-key",
    "content-type",
    "anthropic-version",
    "anthropic-beta",
    "x-routing-key",
)
MAX_AGE = "600"


def parse_origins(values: list[str] | str | None) -> list[str]:
    """``--cors-allowed-origins`` values (each a comma list) as origins, trailing slashes off."""
    if not values:
        return []
    items = [values] if isinstance(values, str) else values
    origins = []
    for item in items:
        for origin in item.split(","):
            origin = origin.strip().rstrip("/")
            if origin and origin not in origins:
                origins.append(origin)
    return origins


class Cors:
    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for this origin, None if not allowed."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin.rstrip("/").lower() in self.origins else None

    @staticmethod
    def is_preflight(method: str, headers: dict[str, str]) -> bool:
        return method == "OPTIONS" and "access-control-request-method" in headers

    def preflight(self, headers: dict[str, str]) -> Response:
        allowed = self.allow_origin(headers.get("origin"))
        if allowed is None:
            return Response(403, b'{"error": "origin not allowed"}')
        requested = [
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        ]
        allow_headers = list(ALLOWED_HEADERS) + [h for h in requested if h not in ALLOWED_HEADERS]
        out = [
            ("access-control-allow-origin", allowed),
            ("access-control-allow-methods", ALLOWED_METHODS),
            ("access-control-allow-headers", ", ".join(allow_headers)),
            ("access-control-max-age", MAX_AGE),
        ]
        if allowed != "*":
            out.append(("vary", "Origin"))
        return Response(204, b"", content_type="text/plain", headers=out)

    def decorate(self, response: Response | StreamingResponse, origin: str | None) -> None:
        allowed = self.allow_origin(origin)
        if allowed is None:
            return
        response.headers.append(("access-control-allow-origin", allowed))
        response.headers.append(("access-control-expose-headers", "retry-after"))
        if allowed != "*":
            response.headers.append(("vary", "Origin"))
