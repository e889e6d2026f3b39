"""HTTP/2 framing and the gRPC status mappings the native client needs (RFC 9113, gRPC/HTTP2).

Only stateless pieces live here: frame types, flags, error codes, frame and header-block builders
and the status mappings. The connection (http2.py) and the stream (stream.py) hold the state.
"""

from __future__ import annotations

import struct
from urllib.parse import unquote

from herdsman.engines.transport.base import RpcError, StatusCode

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (RFC 9113 section 7).
NO_ERROR = 0x0
FLOW_CONTROL_ERROR = 0x3
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers.
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">I")  # 24-bit length + type read as one int, then flags and id

_STATUS_BY_VALUE = {status.value[0]: status for status in StatusCode}
# HTTP/2 error codes a server uses to reset a stream, as gRPC maps them. REFUSED_STREAM is
# handled apart: UNAVAILABLE with refused=True (not processed, safe to retry).
RST_STATUS = {
    CANCEL: StatusCode.CANCELLED,
    ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
}


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int) -> bytes:
    if value < 127:
        return bytes((value,))
    out = bytearray((127,))
    value -= 127
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_header_block(headers: list[tuple[str, str]]) -> bytes:
    """HPACK literals without indexing: stateless, so a block can be built once and reused."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v
    return bytes(out)


def grpc_timeout(seconds: float) -> str:
    """A grpc-timeout value: at most 8 digits, in the finest unit that fits (gRPC's rule)."""
    millis = max(1, int(seconds * 1000))
    if millis < 100_000_000:
        return f"{millis}m"
    return f"{min(int(seconds) + 1, 99_999_999)}S"


def status_from(headers: list[tuple[bytes, bytes]]) -> RpcError | None:
    code, message = None, ""
    for name, value in headers:
        if name == b"grpc-status":
            code = int(value)
        elif name == b"grpc-message":
            message = unquote(value.decode("utf-8", "replace"))
    if code is None:
        return RpcError(StatusCode.UNKNOWN, "call ended without grpc-status")
    if code == 0:
        return None
    return RpcError(_STATUS_BY_VALUE.get(code, StatusCode.UNKNOWN), message)


def http_status(status: int) -> StatusCode:
    # The mapping gRPC defines for HTTP statuses that are not 200.
    return {
        400: StatusCode.INTERNAL,
        401: StatusCode.UNAUTHENTICATED,
        403: StatusCode.PERMISSION_DENIED,
        404: StatusCode.UNIMPLEMENTED,
        429: StatusCode.UNAVAILABLE,
        502: StatusCode.UNAVAILABLE,
        503: StatusCode.UNAVAILABLE,
        504: StatusCode.UNAVAILABLE,
    }.get(status, StatusCode.UNKNOWN)
