"""Request ids and OpenTelemetry tracing (OTLP/HTTP export).

``TracingApp`` wraps the HTTP application. Every request gets a request id (the client's
``X-Request-Id`` when it sends a usable one) carried in a contextvar: it is returned in the
``X-Request-Id`` response header, prefixed to the gateway's log lines for that request
(``RequestIdFilter``) and built into the engine request ids (``engine_request_id``).

Tracing is off unless an OTLP endpoint is configured (``--otlp-endpoint`` or the standard
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``). Off, nothing here creates a span or imports the SDK:
each hook is one global check. On, a request gets one server span (the child of the client's
W3C ``traceparent``) and the pipeline adds stage children through the hooks below, mostly after
the fact from the timestamps it already takes for its stage metrics, so the per-token path does
no tracing work. The engine calls carry ``traceparent`` in their gRPC metadata (with tracing
off, the client's own trace context is passed on unchanged).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from herdsman.http import Request, Response, StreamingResponse

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from herdsman.config import GatewayConfig

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
Handler = Any  # an object with ``async __call__(request) -> Response | StreamingResponse``

MAX_REQUEST_ID = 128
_TRACES_PATH = "/v1/traces"


class RequestScope:
    """What one HTTP request carries through the pipeline (in the ``_SCOPE`` contextvar)."""

    __slots__ = ("current", "done", "from_client", "ids", "metadata", "request_id", "span")

    def __init__(self, request_id: str, from_client: bool) -> None:
        self.request_id = request_id
        self.from_client = from_client
        self.ids = 0  # engine request ids made so far
        self.span: Span | None = None  # the request's server span (tracing on)
        self.current: Span | None = None  # the span engine calls are children of
        self.metadata: Metadata | None = None  # the client's trace context (tracing off)
        # The response is written: tasks started meanwhile (that copied the context) no longer
        # log as this request.
        self.done = False


_SCOPE: ContextVar[RequestScope | None] = ContextVar("herdsman_request", default=None)

# Set by setup_tracing in a gateway process whose tracing is on; None: off.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# time.time_ns() - time.perf_counter_ns(): turns the pipeline's perf_counter stamps into the
# epoch nanoseconds spans take.
_epoch_offset_ns = 0


# -- request ids ---------------------------------------------------------------------------------
def sanitize_request_id(value: str | None) -> str | None:
    """A client's X-Request-Id kept to visible ASCII and at most 128 characters; None when
    nothing usable is left."""
    if not value:
        return None
    if (
        len(value) <= MAX_REQUEST_ID
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        return value
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:MAX_REQUEST_ID]
    return cleaned or None


def current_request_id() -> str | None:
    scope = _SCOPE.get()
    return None if scope is None else scope.request_id


def engine_request_id(prefix: str) -> str:
    """An engine request id (and response id) for the current request.

    It holds the request id; a client's id gets a random suffix, since clients reuse ids and the
    engine's must be unique. Outside a request: ``<prefix>-<random>``, as before.
    """
    scope = _SCOPE.get()
    if scope is None:
        return f"{prefix}-{uuid.uuid4().hex}"
    scope.ids += 1
    if scope.from_client:
        return f"{prefix}-{scope.request_id}-{uuid.uuid4().hex[:8]}"
    if scope.ids == 1:
        return f"{prefix}-{scope.request_id}"
    return f"{prefix}-{scope.request_id}-{scope.ids}"


class RequestIdFilter(logging.Filter):
    """Prefixes ``[request <id>]`` to records logged while a request is being served and sets
    ``record.request_id`` (``-`` outside requests) for formats that name it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "request_id"):  # another handler's filter got here first
            return True
        scope = _SCOPE.get()
        if scope is None or scope.done:
            record.request_id = "-"
        else:
            record.request_id = scope.request_id
            if record.name != "herdsman.access":  # its lines end with id=<request id>
                record.msg = f"[request {scope.request_id}] {record.msg}"
        return True


def install_log_filter() -> None:
    """The filter on every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def client_trace_context(traceparent: str, tracestate: str | None) -> Metadata | None:
    """A client's W3C trace context, passed on as it is when tracing is off; None when it is not
    well-formed (it must not break the engine call: HTTP/2 header values are strict)."""
    if _TRACEPARENT.fullmatch(traceparent) is None or traceparent.startswith("ff"):
        return None
    if tracestate and len(tracestate) <= 512 and tracestate.isascii() and tracestate.isprintable():
        return (("traceparent", traceparent), ("tracestate", tracestate))
    return (("traceparent", traceparent),)


# -- tracing setup -------------------------------------------------------------------------------
def otlp_endpoint(config: GatewayConfig | None) -> str | None:
    """The traces endpoint, or None (tracing off). ``--otlp-endpoint`` is a base URL like
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` is appended unless it is there)."""
    configured = getattr(config, "otlp_endpoint", None)
    if configured:
        base = configured.rstrip("/")
        return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if base:
        return base.rstrip("/") + _TRACES_PATH
    return None


def setup_tracing(config: GatewayConfig | None, exporter: Any = None) -> bool:
    """Turns tracing on in this process when an endpoint is configured (or ``exporter`` is
    given, for tests); False: off. Spans are batched and exported by the SDK's thread; the
    provider is flushed and shut down at exit."""
    global _tracer, _provider, _epoch_offset_ns
    endpoint = otlp_endpoint(config)
    if exporter is None and endpoint is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = getattr(config, "otlp_sample_ratio", None)
    # No ratio given: the SDK's sampler from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
    # (parent-based always-on by default).
    sampler = None if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or "herdsman",
            "process.pid": os.getpid(),
        }
    )
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("tracing: OTLP/HTTP spans to %s", endpoint)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if _provider is not None:
        _provider.shutdown()
    else:
        atexit.register(shutdown_tracing)
    _provider = provider
    _tracer = provider.get_tracer("herdsman")
    _epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
    return True


def shutdown_tracing() -> None:
    """Exports what is still batched and stops the exporter (at process exit, after drain)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def _ns(perf_seconds: float) -> int:
    return int(perf_seconds * 1e9) + _epoch_offset_ns


# -- pipeline hooks (each one global check when tracing is off) -------------------------------
def stage(
    name: str, started: float, ended: float, attributes: dict[str, Any] | None = None
) -> None:
    """A finished child span of the request span, from two ``time.perf_counter()`` stamps."""
    if _tracer is None:
        return
    scope = _SCOPE.get()
    if scope is None or scope.span is None:
        return
    from opentelemetry.trace import set_span_in_context

    span = _tracer.start_span(
        name,
        context=set_span_in_context(scope.span),
        start_time=_ns(started),
        attributes=attributes,
    )
    span.end(end_time=_ns(ended))


def start_stage(name: str, attributes: dict[str, Any] | None = None) -> Span | None:
    """A live child span of the request span that engine calls made meanwhile are children of
    (their ``traceparent``); end it with ``end_stage``. None when not tracing."""
    if _tracer is None:
        return None
    scope = _SCOPE.get()
    if scope is None or scope.span is None:
        return None
    from opentelemetry.trace import set_span_in_context

    span = _tracer.start_span(name, context=set_span_in_context(scope.span), attributes=attributes)
    scope.current = span
    return span


def end_stage(span: Span | None, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
    span.end()
    scope = _SCOPE.get()
    if scope is not None and scope.current is span:
        scope.current = scope.span


def annotate(attributes: dict[str, Any]) -> None:
    """Attributes on the request span."""
    if _tracer is None:
        return
    scope = _SCOPE.get()
    if scope is not None and scope.span is not None:
        scope.span.set_attributes(attributes)


def engine_metadata() -> Metadata | None:
    """gRPC metadata for an engine call: the W3C trace context of the current span (or, with
    tracing off, the client's own), None when there is none."""
    scope = _SCOPE.get()
    if scope is None:
        return None
    span = scope.current
    if span is None:
        return scope.metadata
    context = span.get_span_context()
    traceparent = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    state = context.trace_state.to_header() if context.trace_state else ""
    if state:
        return (("traceparent", traceparent), ("tracestate", state))
    return (("traceparent", traceparent),)


# -- the HTTP wrapper ----------------------------------------------------------------------------
class TracingApp:
    """Wraps the gateway's HTTP app: request ids always, a server span per request when tracing
    is on. Same call signature as the app it wraps."""

    def __init__(self, app: Handler, config: GatewayConfig | None = None) -> None:
        self.app = app
        setup_tracing(config)
        install_log_filter()

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        headers = request.headers
        client_id = sanitize_request_id(headers.get("x-request-id"))
        scope = RequestScope(client_id or uuid.uuid4().hex, client_id is not None)
        _SCOPE.set(scope)  # stays set for the body too: the connection's task streams it
        if _tracer is None:
            traceparent = headers.get("traceparent")
            if traceparent:
                scope.metadata = client_trace_context(traceparent, headers.get("tracestate"))
            response = await self.app(request)
            response.headers.append(("x-request-id", scope.request_id))
            if isinstance(response, StreamingResponse):
                response.on_close = _closing(response.on_close, scope, None)
            else:
                scope.done = True
            return response
        return await self._traced(request, scope)

    async def _traced(self, request: Request, scope: RequestScope) -> Response | StreamingResponse:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, StatusCode

        from herdsman.api.app import find_route

        assert _tracer is not None
        found = find_route(request.path)
        route = found[0] if found is not None else None
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "herdsman.request_id": scope.request_id,
        }
        if route is not None:
            attributes["http.route"] = route
        agent = request.headers.get("user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        started = _ns(request.received_at) if request.received_at else None
        span = _tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            context=extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=started,
        )
        scope.span = scope.current = span
        try:
            response = await self.app(request)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            span.end()
            scope.done = True
            raise
        response.headers.append(("x-request-id", scope.request_id))
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(StatusCode.ERROR)
        if isinstance(response, StreamingResponse):
            response.on_close = _closing(response.on_close, scope, span)
        else:
            span.end()
            scope.done = True
        return response


def _closing(
    previous: Callable[[], None] | None, scope: RequestScope, span: Span | None
) -> Callable[[], None]:
    """A streamed response's on_close: the wrapped app's, then the request is over."""

    def close() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            scope.done = True
            if span is not None:
                span.end()

    return close
