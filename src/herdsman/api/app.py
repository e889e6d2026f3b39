"""The gateway's HTTP application: which path goes to which handler."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

from herdsman.api.bodies import json_response
from herdsman.api.chat import chat_completions
from herdsman.api.completions import completions
from herdsman.api.conversations import (
    add_items,
    create_conversation,
    delete_conversation,
    delete_item,
    get_conversation,
    get_item,
    list_items,
    update_conversation,
)
from herdsman.api.errors import APIError, api_error
from herdsman.api.messages import count_tokens, create_message
from herdsman.api.native_generate import native_generate
from herdsman.api.parse import parse_function_call, parse_reasoning
from herdsman.api.pooling import classify, embeddings, rerank, score
from herdsman.api.responses import (
    cancel_response,
    create_response,
    delete_response,
    get_response,
    list_input_items,
)
from herdsman.api.tokenize import detokenize, tokenize
from herdsman.api.workers import add_worker, delete_worker, get_worker, list_workers
from herdsman.http import Request, Response, StreamingResponse
from herdsman.observability import METRICS
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.errors import Overloaded, RequestError

log = logging.getLogger(__name__)

Endpoint = Callable[[ServingContext, Request], Awaitable[Response | StreamingResponse]]


async def list_models(ctx: ServingContext, request: Request) -> Response:
    """Every model with at least one worker (a model whose workers were all removed is gone)."""
    served = {w.model_name for w in ctx.registry}
    cards = [
        {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "herdsman",
            "root": model.name,
            "max_model_len": model.max_context_length,
        }
        for name, model in sorted(ctx.models.items())
        if name in served
    ]
    return json_response({"object": "list", "data": cards})


async def metrics(ctx: ServingContext, request: Request) -> Response:
    text = METRICS.registry.render().encode()
    return Response(200, text, content_type="text/plain; version=0.0.4; charset=utf-8")


async def health(ctx: ServingContext, request: Request) -> Response:
    healthy = len(ctx.registry.healthy())
    status = 200 if healthy else 503
    return json_response(
        {
            "status": "ok" if healthy else "unavailable",
            "healthy_workers": healthy,
            "workers": len(ctx.registry),
            "pid": os.getpid(),
        },
        status,
    )


async def liveness(ctx: ServingContext, request: Request) -> Response:
    """The process's event loop answers (a Kubernetes liveness probe)."""
    return json_response({"status": "alive", "pid": os.getpid()})


async def readiness(ctx: ServingContext, request: Request) -> Response:
    """200 while at least one worker is healthy and the gateway is not draining; else 503 and
    why (a Kubernetes readiness probe: a load balancer stops sending here at once)."""
    healthy = len(ctx.registry.healthy())
    reason = None
    if ctx.draining:
        reason = "draining: the gateway is shutting down"
    elif not healthy:
        reason = "no healthy worker"
    body = {"status": "ready" if reason is None else "not ready", "healthy_workers": healthy}
    if reason is not None:
        body["reason"] = reason
    return json_response(body, 200 if reason is None else 503)


# Endpoints that run generations: admitted by the concurrency limit and its queue.
GENERATION_ENDPOINTS = frozenset(
    {
        chat_completions,
        completions,
        create_response,
        create_message,
        native_generate,
        embeddings,
        score,
        rerank,
        classify,
    }
)

ROUTES: dict[str, dict[str, Endpoint]] = {
    "/v1/chat/completions": {"POST": chat_completions},
    "/v1/completions": {"POST": completions},
    "/v1/models": {"GET": list_models},
    "/v1/tokenize": {"POST": tokenize},
    "/v1/detokenize": {"POST": detokenize},
    # vLLM's server has them without the /v1 prefix; clients written for it call these.
    "/tokenize": {"POST": tokenize},
    "/detokenize": {"POST": detokenize},
    "/parse/reasoning": {"POST": parse_reasoning},
    "/parse/function_call": {"POST": parse_function_call},
    "/health": {"GET": health},
    "/liveness": {"GET": liveness},
    "/readiness": {"GET": readiness},
    "/metrics": {"GET": metrics},
    "/workers": {"GET": list_workers, "POST": add_worker},
    "/workers/{id}": {"GET": get_worker, "DELETE": delete_worker},
    "/v1/responses": {"POST": create_response},
    "/v1/responses/{id}": {"GET": get_response, "DELETE": delete_response},
    "/v1/responses/{id}/cancel": {"POST": cancel_response},
    "/v1/responses/{id}/input_items": {"GET": list_input_items},
    "/v1/conversations": {"POST": create_conversation},
    "/v1/conversations/{id}": {
        "GET": get_conversation,
        "POST": update_conversation,
        "DELETE": delete_conversation,
    },
    "/v1/conversations/{id}/items": {"GET": list_items, "POST": add_items},
    "/v1/conversations/{id}/items/{id}": {"GET": get_item, "DELETE": delete_item},
    # Anthropic's Messages API (its errors are Anthropic-shaped, made in the endpoints).
    "/v1/messages": {"POST": create_message},
    "/v1/messages/count_tokens": {"POST": count_tokens},
    # SGLang's native API.
    "/generate": {"POST": native_generate},
    # Pooling models; vLLM's server also has score, rerank and classify without /v1.
    "/v1/embeddings": {"POST": embeddings},
    "/v1/score": {"POST": score},
    "/score": {"POST": score},
    "/v1/rerank": {"POST": rerank},
    "/rerank": {"POST": rerank},
    "/v2/rerank": {"POST": rerank},
    "/v1/classify": {"POST": classify},
    "/classify": {"POST": classify},
}


def _template(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


# Templates with {id} segments, by their length in segments.
_TEMPLATES: dict[int, list[tuple[tuple[str, ...], str]]] = {}
for _key in ROUTES:
    if "{id}" in _key:
        _TEMPLATES.setdefault(len(_template(_key)), []).append((_template(_key), _key))


def find_route(path: str) -> tuple[str, dict[str, Endpoint]] | None:
    """The route template a path matches, and its endpoints. An ``{id}`` segment matches any
    non-empty segment; the endpoint reads it off the path."""
    key = path.rstrip("/") or "/"
    methods = ROUTES.get(key)
    if methods is not None:
        return key, methods
    segments = _template(key)
    for template, name in _TEMPLATES.get(len(segments), ()):
        if all(t == s or (t == "{id}" and s) for t, s in zip(template, segments, strict=True)):
            return name, ROUTES[name]
    return None


_STATUS_TEXT = {code: str(code) for code in range(100, 600)}


class GatewayApp:
    """Dispatches requests to endpoints and turns every ``APIError`` into its JSON response."""

    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        found = find_route(request.path)
        route_key, methods = found if found is not None else ("other", None)
        try:
            if methods is None:
                raise APIError(404, f"no route for {request.path}", code="not_found")
            endpoint = methods.get(request.method)
            if endpoint is None:
                allowed = ", ".join(sorted(methods))
                raise APIError(405, f"{request.method} is not allowed here; use {allowed}")
            if endpoint in GENERATION_ENDPOINTS:
                response = await self._admitted(endpoint, request)
            else:
                response = await endpoint(self.ctx, request)
        except RequestError as exc:
            if isinstance(exc, Overloaded):
                METRICS.rejected.inc(labels=(exc.code or "overloaded",))
            error = api_error(exc)
            if error.status >= 500:
                log.warning("%s %s -> %d: %s", request.method, request.path, error.status, exc)
            response = error.response()
        except APIError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
            response = exc.response()
        # The route's template, never the raw path: label values stay a fixed, small set.
        METRICS.requests.inc(labels=(route_key, _STATUS_TEXT[response.status]))
        return response

    async def _admitted(self, endpoint: Endpoint, request: Request) -> Response | StreamingResponse:
        """Run a generation endpoint within a concurrency slot, held until its body is written."""
        admission = self.ctx.admission
        await admission.acquire()
        try:
            response = await endpoint(self.ctx, request)
        except BaseException:
            admission.release()
            raise
        if isinstance(response, StreamingResponse):
            response.on_close = admission.release
        else:
            admission.release()
        return response
