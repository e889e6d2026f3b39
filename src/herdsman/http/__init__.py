"""A small HTTP/1.1 server on asyncio and httptools, built for streaming responses.

It exists instead of an ASGI stack because the gateway writes one SSE frame per token: every
layer between the handler and ``transport.write`` costs on that path, and a client that goes away
has to cancel its handler at once so the engine gets an Abort.
"""

from herdsman.http.messages import Handler, Request, Response, StreamingResponse
from herdsman.http.server import HttpServer, ServerLimits

__all__ = [
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "ServerLimits",
    "StreamingResponse",
]
