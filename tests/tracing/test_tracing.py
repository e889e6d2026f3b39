"""Request ids and tracing (herdsman.observability.tracing) in-process: the helpers, and the span
tree of real chat requests through GatewayApp in front of an engine-sim, exported to the SDK's
InMemorySpanExporter."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.conftest import QWEN3, Proc, start_sim

from herdsman.api.app import GatewayApp
from herdsman.config import GatewayConfig
from herdsman.http import Request, Response, StreamingResponse
from herdsman.observability import tracing
from herdsman.observability.tracing import (
    RequestIdFilter,
    TracingApp,
    client_trace_context,
    engine_request_id,
    otlp_endpoint,
    sanitize_request_id,
)
from herdsman.serve.context import build_context, probe_fleet

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


# -- helpers -------------------------------------------------------------------------------------
def test_sanitize_request_id() -> None:
    assert sanitize_request_id("abc-123_x.y") == "abc-123_x.y"
    assert sanitize_request_id(None) is None
    assert sanitize_request_id("") is None
    assert sanitize_request_id("a b\r\nc\x00d") == "abcd"
    assert sanitize_request_id("é") is None
    assert sanitize_request_id("x" * 500) == "x" * 128


def test_engine_request_ids() -> None:
    assert engine_request_id("chatcmpl").startswith("chatcmpl-")  # outside a request
    scope = tracing.RequestScope("client-7", from_client=True)
    token = tracing._SCOPE.set(scope)
    try:
        ids = {engine_request_id("chatcmpl") for _ in range(50)}
        assert len(ids) == 50  # a reused client id still makes unique engine ids
        assert all(i.startswith("chatcmpl-client-7-") for i in ids)
        tracing._SCOPE.set(tracing.RequestScope("0123abcd", from_client=False))
        assert engine_request_id("cmpl") == "cmpl-0123abcd"
        assert engine_request_id("cmpl") == "cmpl-0123abcd-2"
    finally:
        tracing._SCOPE.reset(token)


def test_client_trace_context_is_checked() -> None:
    assert client_trace_context(CLIENT_PARENT, "a=1") == (
        ("traceparent", CLIENT_PARENT),
        ("tracestate", "a=1"),
    )
    assert client_trace_context(CLIENT_PARENT, "bad\nstate") == (("traceparent", CLIENT_PARENT),)
    assert client_trace_context("00-xyz", None) is None
    assert client_trace_context(CLIENT_PARENT + "\r\nx: y", None) is None


def test_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert otlp_endpoint(GatewayConfig()) is None
    config = GatewayConfig(otlp_endpoint="http://c:4318/")
    assert otlp_endpoint(config) == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")
    assert otlp_endpoint(GatewayConfig()) == "http://e:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x")
    assert otlp_endpoint(GatewayConfig()) == "http://t:9/x"


# -- through the app ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim") / "trace.log"


@pytest.fixture(scope="module")
def tracing_sim(trace_log: Path) -> Iterator[Proc]:
    proc = start_sim(QWEN3, "vllm", "--ttft-base-ms", "1", "--itl-base-ms", "1",
                     "--trace-log", str(trace_log))  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    assert tracing.setup_tracing(None, exporter=memory)
    yield memory
    tracing.shutdown_tracing()


def _chat(stream: bool, headers: dict[str, str]) -> Request:
    body = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 8,
        "stream": stream,
    }
    return Request(
        method="POST",
        path="/v1/chat/completions",
        query="",
        headers={"content-type": "application/json", **headers},
        body=json.dumps(body).encode(),
        received_at=time.perf_counter(),
    )


async def _body(response: Response | StreamingResponse) -> bytes:
    if isinstance(response, Response):
        return response.body
    out = b""
    try:
        async for chunk in response.chunks:
            out += chunk
    finally:
        if response.on_close is not None:
            response.on_close()
    return out


async def _serve(
    sim: Proc, *requests: Request, transport: str = "native"
) -> list[tuple[Response | StreamingResponse, bytes]]:
    config = GatewayConfig(
        workers=[f"grpc://{sim.address}"], storage="none", grpc_transport=transport
    )
    ctx = await build_context(config, await probe_fleet(config))
    app = TracingApp(GatewayApp(ctx), config)
    try:
        results = []
        for request in requests:
            response = await app(request)
            results.append((response, await _body(response)))
        return results
    finally:
        await ctx.registry.close()


def _header(response: Response | StreamingResponse, name: str) -> str | None:
    return next((v for k, v in response.headers if k == name), None)


async def test_span_tree_of_a_streamed_chat(
    tracing_sim: Proc, exporter: InMemorySpanExporter
) -> None:
    [(response, body)] = await _serve(
        tracing_sim, _chat(True, {"traceparent": CLIENT_PARENT, "x-request-id": "req-42"})
    )
    assert response.status == 200 and b"[DONE]" in body
    assert _header(response, "x-request-id") == "req-42"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["POST /v1/chat/completions"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and root.parent.span_id == 0x00F067AA0BA902B7
    assert root.kind.name == "SERVER"
    attrs = root.attributes or {}
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == 200
    assert attrs["herdsman.request_id"] == "req-42"
    assert attrs["gen_ai.request.model"] == "qwen3"
    assert attrs["gen_ai.usage.output_tokens"] == 8
    for name in ("template", "tokenize", "routing", "engine.ttft", "stream"):
        child = spans[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id, name
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time, name
    assert (spans["routing"].attributes or {})["herdsman.worker"] == f"grpc://{tracing_sim.address}"
    engine_id = (spans["engine.ttft"].attributes or {})["herdsman.engine_request_id"]
    assert engine_id.startswith("chatcmpl-req-42-")
    assert spans["routing"].end_time <= spans["engine.ttft"].start_time
    assert spans["engine.ttft"].end_time <= spans["stream"].end_time


async def test_non_streamed_chat_and_a_generated_id(
    tracing_sim: Proc, exporter: InMemorySpanExporter
) -> None:
    [(response, body)] = await _serve(tracing_sim, _chat(False, {}))
    assert response.status == 200
    request_id = _header(response, "x-request-id")
    assert request_id is not None and len(request_id) == 32
    assert msgspec.json.decode(body)["id"] == f"chatcmpl-{request_id}"
    [root] = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    assert root.parent is None  # no client trace: a new one
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"template", "tokenize", "routing", "engine.ttft", "stream"} <= names


def test_log_filter_prefixes_the_request_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    token = tracing._SCOPE.set(tracing.RequestScope("rid-9", from_client=True))
    try:
        RequestIdFilter().filter(record)
    finally:
        tracing._SCOPE.reset(token)
    assert record.getMessage() == "[request rid-9] hello w"
    assert record.request_id == "rid-9"  # type: ignore[attr-defined]
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", (), None)
    RequestIdFilter().filter(other)
    assert other.getMessage() == "plain" and other.request_id == "-"  # type: ignore[attr-defined]
    # A task that copied the context during a request logs as no request once it is answered.
    finished = tracing.RequestScope("rid-10", from_client=True)
    finished.done = True
    token = tracing._SCOPE.set(finished)
    try:
        late = logging.LogRecord("x", logging.INFO, __file__, 1, "late", (), None)
        RequestIdFilter().filter(late)
    finally:
        tracing._SCOPE.reset(token)
    assert late.getMessage() == "late"


def _engine_traceparent(trace_log: Path, request_id_prefix: str) -> str:
    lines = [line.split() for line in trace_log.read_text().splitlines()]
    [traceparent] = [tp for rid, tp in lines if rid.startswith(request_id_prefix)]
    return traceparent


@pytest.mark.parametrize("transport", ["native", "grpcio"])
async def test_engine_gets_the_trace_context(
    tracing_sim: Proc, trace_log: Path, exporter: InMemorySpanExporter, transport: str
) -> None:
    rid = f"to-engine-{transport}"
    [(response, _)] = await _serve(
        tracing_sim,
        _chat(False, {"traceparent": CLIENT_PARENT, "x-request-id": rid}),
        transport=transport,
    )
    assert response.status == 200
    [ttft] = [s for s in exporter.get_finished_spans() if s.name == "engine.ttft"]
    expected = f"00-{TRACE_ID}-{ttft.context.span_id:016x}-01"
    assert _engine_traceparent(trace_log, f"chatcmpl-{rid}-") == expected


@pytest.mark.parametrize("transport", ["native", "grpcio"])
async def test_tracing_off_passes_the_client_context_on(
    tracing_sim: Proc, trace_log: Path, transport: str
) -> None:
    assert not tracing.enabled()
    rid = f"off-engine-{transport}"
    [(response, body)] = await _serve(
        tracing_sim,
        _chat(True, {"traceparent": CLIENT_PARENT, "x-request-id": rid}),
        transport=transport,
    )
    assert b"[DONE]" in body and _header(response, "x-request-id") == rid
    assert _engine_traceparent(trace_log, f"chatcmpl-{rid}-") == CLIENT_PARENT
    await _serve(tracing_sim, _chat(True, {"x-request-id": f"{rid}-none"}), transport=transport)
    assert _engine_traceparent(trace_log, f"chatcmpl-{rid}-none-") == "-"
