"""Per-request CPU of request ids and tracing: the gateway app in-process in front of an
engine-sim, streamed chats one after another, CPU time of this process (the export thread
included) per request, for: no wrapper at all, the wrapper with tracing off, tracing on
(OTLP/HTTP batches to a local sink that answers 200).

    .venv/bin/python -m bench.tracing_overhead [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import QWEN3, start_sim

from herdsman.api.app import GatewayApp
from herdsman.config import GatewayConfig
from herdsman.http import Request, Response
from herdsman.observability import tracing
from herdsman.serve.context import build_context, probe_fleet


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _request(max_tokens: int) -> Request:
    body = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "Tell me about herding."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    return Request(
        "POST",
        "/v1/chat/completions",
        "",
        {"content-type": "application/json", "x-request-id": "bench"},
        json.dumps(body).encode(),
        received_at=time.perf_counter(),
    )


async def _run(app: object, requests: int, max_tokens: int) -> float:
    """CPU seconds per request."""
    started = time.process_time()
    for _ in range(requests):
        response = await app(_request(max_tokens))  # type: ignore[operator]
        assert not isinstance(response, Response), response.body
        async for _chunk in response.chunks:
            pass
        if response.on_close is not None:
            response.on_close()
    return (time.process_time() - started) / requests


class _Hooks:
    """An app doing only what the pipeline does for tracing in one chat request."""

    async def __call__(self, request: Request) -> Response:
        tracing.engine_request_id("chatcmpl")
        now = time.perf_counter()
        if tracing.enabled():
            tracing.stage("template", now, now)
            tracing.stage("tokenize", now, now)
            tracing.stage("routing", now, now)
        span = tracing.start_stage("engine.ttft")
        tracing.engine_metadata()
        tracing.end_stage(span)
        if tracing.enabled():
            tracing.stage("stream", now, now)
            tracing.annotate({"gen_ai.usage.output_tokens": 16})
        return Response(200, b"{}")


async def _micro(requests: int) -> None:
    """The wrapper and hooks alone, without the pipeline: their own CPU per request."""
    hooks = _Hooks()
    config = GatewayConfig()
    sink = tracing.TracingApp(hooks, config)
    results = {}
    for name in ("bare", "off", "on"):
        app = hooks if name == "bare" else sink
        if name == "on":
            from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

            class Drop(SpanExporter):
                def export(self, spans: object) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            tracing.setup_tracing(None, exporter=Drop())
        request = _request(16)
        await app(request)
        started = time.process_time()
        for _ in range(requests):
            await app(request)
        results[name] = (time.process_time() - started) / requests
        request.headers.pop("x-request-id", None)
    tracing.shutdown_tracing()
    for name, value in results.items():
        print(f"micro {name:5s}: {value * 1e6:6.1f} us per request")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--micro", action="store_true", help="the wrapper and hooks alone")
    args = parser.parse_args()
    if args.micro:
        await _micro(args.requests)
        return
    sim = start_sim(QWEN3, "vllm", "--ttft-base-ms", "0", "--itl-base-ms", "0",
                    "--prefill-ms-per-1k", "0", "--itl-per-running-ms", "0")  # fmt: skip
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    config = GatewayConfig(workers=[f"grpc://{sim.address}"], storage="none")
    on = GatewayConfig(
        workers=config.workers,
        storage="none",
        otlp_endpoint=f"http://127.0.0.1:{sink.server_address[1]}",
    )
    try:
        ctx = await build_context(config, await probe_fleet(config))
        bare = GatewayApp(ctx)
        off = tracing.TracingApp(bare, config)
        await _run(bare, 50, args.max_tokens)  # warm up
        results: dict[str, list[float]] = {"bare": [], "off": [], "on": []}
        for _ in range(args.rounds):
            tracing.shutdown_tracing()
            results["bare"].append(await _run(bare, args.requests, args.max_tokens))
            results["off"].append(await _run(off, args.requests, args.max_tokens))
            traced = tracing.TracingApp(bare, on)
            results["on"].append(await _run(traced, args.requests, args.max_tokens))
        tracing.shutdown_tracing()  # flushes what is batched (its CPU is not counted)
        for name, values in results.items():
            print(
                f"{name:5s} CPU per request: median {statistics.median(values) * 1e6:7.0f} us "
                f"(rounds: {', '.join(f'{v * 1e6:.0f}' for v in values)})"
            )
        await ctx.registry.close()
    finally:
        sim.stop()
        sink.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
