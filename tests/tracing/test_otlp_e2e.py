"""End to end: a gateway process exporting to a real OTLP/HTTP receiver (started here), a client
traceparent and X-Request-Id, and an engine-sim that logs the trace context it was sent."""

from __future__ import annotations

import gzip
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from tests.conftest import QWEN3, start_gateway, start_sim

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
STAGES = {"template", "tokenize", "routing", "engine.ttft", "stream"}


class _Receiver(BaseHTTPRequestHandler):
    spans: queue.Queue[tuple[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        status = 404
        if self.path == "/v1/traces":
            status = 200
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.put((service, span))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[str, object]]]]:
    spans: queue.Queue[tuple[str, object]] = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"spans": spans})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", spans
    server.shutdown()
    server.server_close()


def test_streamed_chat_exports_its_trace(
    receiver: tuple[str, queue.Queue[tuple[str, object]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, spans = receiver
    # Spans leave only when the gateway flushes at exit (the batch delay is far longer than the
    # test): this proves the flush on shutdown too.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "herdsman-e2e")
    trace_log = tmp_path / "trace.log"
    sim = start_sim(QWEN3, "vllm", "--ttft-base-ms", "1", "--itl-base-ms", "1",
                    "--trace-log", str(trace_log))  # fmt: skip
    try:
        gateway = start_gateway(sim.address, extra=("--workers", "1", "--otlp-endpoint", endpoint))
        try:
            body = {
                "model": "qwen3",
                "messages": [{"role": "user", "content": "Hi there"}],
                "max_tokens": 6,
                "stream": True,
            }
            headers = {"traceparent": CLIENT_PARENT, "x-request-id": "e2e-req-1"}
            with httpx.stream(
                "POST",
                f"http://{gateway.address}/v1/chat/completions",
                json=body,
                headers=headers,
                timeout=30,
            ) as response:
                text = response.read().decode()
            assert response.status_code == 200 and "[DONE]" in text
            assert response.headers["x-request-id"] == "e2e-req-1"
            # The response id (the engine request id) holds the client's request id.
            assert '"id":"chatcmpl-e2e-req-1-' in text.replace(" ", "")
        finally:
            gateway.stop()  # SIGTERM: drain, then every process flushes its spans
        received = []
        while not STAGES | {"POST /v1/chat/completions"} <= {s.name for _, s in received}:
            received.append(spans.get(timeout=30))
        (engine_line,) = [
            line for line in trace_log.read_text().splitlines() if line.startswith("chatcmpl-")
        ]
    finally:
        sim.stop()

    by_name = {span.name: span for _, span in received}
    assert {service for service, _ in received} == {"herdsman-e2e"}
    root = by_name["POST /v1/chat/completions"]
    assert root.trace_id.hex() == TRACE_ID
    assert root.parent_span_id.hex() == "b7ad6b7169203331"
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["herdsman.request_id"].string_value == "e2e-req-1"
    assert attributes["http.response.status_code"].int_value == 200
    for name in STAGES:
        assert by_name[name].trace_id.hex() == TRACE_ID, name
        assert by_name[name].parent_span_id == root.span_id, name
    # The engine got the trace context: the engine call's parent is the TTFT span.
    request_id, traceparent = engine_line.split()
    assert request_id.startswith("chatcmpl-e2e-req-1-")
    ttft = by_name["engine.ttft"]
    assert traceparent == f"00-{TRACE_ID}-{ttft.span_id.hex()}-01"
    ttft_attributes = {a.key: a.value.string_value for a in ttft.attributes}
    assert ttft_attributes["herdsman.engine_request_id"] == request_id
