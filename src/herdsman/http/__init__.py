"""A small HTTP/1.1 server on asyncio and httptools, built for streaming responses.

It exists instead of uvicorn or granian because, measured side by side (docs/benchmarks.md, "HTTP
server"), it costs no more per request than uvicorn and less than granian, and it is the only one
of the three that holds against slow and hostile clients: header and body timeouts, URL, header
and body limits answered early, a connection cap, bounded pipelining, a send timeout. A client
that goes away cancels its handler at once, so the engine gets an Abort.
"""

from herdsman.http.messages import BodyWriter, Handler, Request, Response, StreamingResponse
from herdsman.http.server import HttpServer, ServerLimits

__all__ = [
    "BodyWriter",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "ServerLimits",
    "StreamingResponse",
]
