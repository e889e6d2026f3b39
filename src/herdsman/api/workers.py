"""The admin API over the fleet: GET/POST /workers, GET/DELETE /workers/{id}.

Reads answer from this process's view, which every process shares (the supervisor broadcasts
each change and waits for every process to apply it before the POST or DELETE returns). The body
of POST takes SMG's shape, ``{"url": "grpc://HOST:PORT"}``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from herdsman.api.bodies import decode_body, json_response
from herdsman.api.errors import APIError, bad_request
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServingContext
from herdsman.routing import Worker
from herdsman.routing.pairing import ROLES, incompatibility


class AddWorkerRequest(msgspec.Struct, kw_only=True):
    url: str
    # Seconds to wait for the engine to answer before replying 202 (it is still loading).
    wait: float = 30.0
    # Disaggregated serving: "regular", "prefill" or "decode" (SMG names it worker_type).
    role: str | None = None
    worker_type: str | None = None
    # An SGLang prefill's bootstrap port, when the engine does not state it.
    bootstrap_port: int | None = None


def worker_view(worker: Worker) -> dict[str, Any]:
    load = worker.load
    return {
        "id": worker.id,
        "url": worker.url,
        "model": worker.model_name,
        "role": worker.role,
        "dp_rank": worker.dp_rank,
        "status": "healthy" if worker.healthy else "unhealthy",
        "healthy": worker.healthy,
        "circuit": worker.circuit.state.value,
        "in_flight": worker.in_flight,
        "load": {
            "running": load.running,
            "waiting": load.waiting,
            "waiting_uncached_tokens": load.waiting_uncached_tokens,
            "token_usage": load.token_usage,
            "source": load.source,
        },
    }


def _kv_view(ctx: ServingContext, worker: Worker) -> dict[str, Any] | None:
    """What cache_aware knows of the worker's KV cache, and how (events or approximate)."""
    model = ctx.models.get(worker.model_name)
    stream = ctx.kv_streams.get(worker.url)
    if stream is None:
        return None
    view: dict[str, Any] = {"stream": stream.mode, "last_sequence": stream.last_sequence}
    if model is not None and model.index is not None:
        view.update(model.index.worker_stats(worker.id) or {"precise": False, "blocks": 0})
    return view


def _pairing_view(ctx: ServingContext, worker: Worker) -> dict[str, Any]:
    """What the worker states for pairing, and the workers it will never pair with, and why."""
    other = "decode" if worker.role == "prefill" else "prefill"
    refused: dict[str, str] = {}
    for peer in ctx.registry.for_model(worker.model_name):
        if peer.role != other:
            continue
        prefill, decode = (worker, peer) if worker.role == "prefill" else (peer, worker)
        reason = incompatibility(prefill, decode)
        if reason is not None:
            refused[peer.id] = reason
    view: dict[str, Any] = {"stated": dict(worker.pairing), "incompatible": refused}
    if worker.role == "prefill":
        view["bootstrap_port"] = worker.bootstrap_port
    return view


def describe_worker(ctx: ServingContext, worker: Worker) -> dict[str, Any]:
    view = worker_view(worker)
    kv = _kv_view(ctx, worker)
    if kv is not None:
        view["kv_cache"] = kv
    if worker.role != "regular":
        view["pairing"] = _pairing_view(ctx, worker)
    return view


def _pending_view(url: str) -> dict[str, Any]:
    return {"id": None, "url": url, "model": None, "status": "pending", "healthy": False}


async def list_workers(ctx: ServingContext, request: Request) -> Response:
    workers = [describe_worker(ctx, w) for w in ctx.registry]
    workers += [_pending_view(url) for url in sorted(ctx.pending)]
    return json_response({"object": "list", "workers": workers, "total": len(workers)})


def _worker(ctx: ServingContext, request: Request) -> Worker:
    worker_id = request.path.rstrip("/").rpartition("/")[2]
    worker = ctx.registry.get(worker_id)
    if worker is None:
        raise APIError(404, f"no worker {worker_id!r}", code="worker_not_found")
    return worker


async def get_worker(ctx: ServingContext, request: Request) -> Response:
    return json_response(describe_worker(ctx, _worker(ctx, request)))


async def add_worker(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, AddWorkerRequest)
    if not body.url.startswith(("grpc://", "grpcs://")):
        raise bad_request("url must look like grpc://HOST:PORT or grpcs://HOST:PORT", "url")
    role = body.role or body.worker_type or "regular"
    if role not in ROLES:
        raise bad_request(f"role must be one of {', '.join(ROLES)}, not {role!r}", "role")
    if body.bootstrap_port is not None and not 0 < body.bootstrap_port < 65536:
        raise bad_request("bootstrap_port must be a TCP port (1-65535)", "bootstrap_port")
    if ctx.fleet is None:
        raise APIError(501, "this gateway has no fleet supervisor", code="not_supported")
    status, payload = await ctx.fleet.add_worker(
        body.url, max(0.0, body.wait), role, body.bootstrap_port
    )
    return json_response(payload, status)


async def delete_worker(ctx: ServingContext, request: Request) -> Response:
    worker = _worker(ctx, request)
    if ctx.fleet is None:
        raise APIError(501, "this gateway has no fleet supervisor", code="not_supported")
    status, payload = await ctx.fleet.remove_worker(worker.id)
    return json_response(payload, status)
