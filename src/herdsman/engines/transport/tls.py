"""TLS to engines (grpcs:// workers) for both transports, from TransportOptions."""

from __future__ import annotations

import ssl
from pathlib import Path

from herdsman.engines.transport.base import TransportOptions


def client_ssl_context(options: TransportOptions) -> ssl.SSLContext:
    """Verify the engine against ``ca_file`` (or the system's CAs); present a client certificate
    when one is given (mTLS); offer only ``h2`` by ALPN, as gRPC requires."""
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.cert_file:
        context.load_cert_chain(options.cert_file, options.key_file)
    context.set_alpn_protocols(["h2"])
    return context


def read_optional(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
