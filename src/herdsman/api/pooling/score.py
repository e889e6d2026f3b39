"""POST /v1/score and POST /v1/rerank (also /score, /rerank), in the shapes vLLM serves them.

An embedding model scores a pair by the cosine similarity of the two texts' embeddings; a
cross-encoder (a classifier with one label) reads the pair as one input, encoded the way its
tokenizer pairs two texts, and its logit through a sigmoid is the score.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from herdsman.api.bodies import decode_body, json_response
from herdsman.api.errors import bad_request
from herdsman.api.pooling.common import cosine, list_response, run, sigmoid, usage_of
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.pooling import pair_input, text_input
from herdsman.pipeline.prepare import new_request_id


class ScoreRequest(msgspec.Struct, kw_only=True):
    # vLLM's names for the two sides: text_1/text_2, queries/documents (or items), data_1/data_2.
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    items: str | list[str] | None = None
    data_1: str | list[str] | None = None
    data_2: str | list[str] | None = None
    model: str | None = None
    truncate_prompt_tokens: int | None = None


class Document(msgspec.Struct):
    text: str


class RerankRequest(msgspec.Struct, kw_only=True):
    query: str
    documents: list[str | Document]
    model: str | None = None
    top_n: Annotated[int, Meta(ge=0)] | None = None
    return_documents: bool = True
    truncate_prompt_tokens: int | None = None


async def score(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, ScoreRequest)
    model = ctx.served(body.model, "score")
    model.require("score", "/v1/score")
    first = _first_given(body.text_1, body.queries, body.data_1)
    second = _first_given(body.text_2, body.documents, body.items, body.data_2)
    if first is None or second is None:
        raise bad_request("send text_1 and text_2 (or queries and documents)", "text_1")
    firsts = [first] if isinstance(first, str) else first
    seconds = [second] if isinstance(second, str) else second
    if not firsts or not seconds:
        raise bad_request("at least one text pair must be given", "text_1")
    if len(firsts) != 1 and len(firsts) != len(seconds):
        raise bad_request(
            f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: the lengths must be "
            "1:1, 1:N or N:N",
            "text_2",
        )
    request_id = new_request_id("score")
    scores, tokens = await _scores(
        ctx, model, request, request_id, firsts, seconds, body.truncate_prompt_tokens
    )
    data: list[dict[str, object]] = [
        {"index": i, "object": "score", "score": s} for i, s in enumerate(scores)
    ]
    return list_response(request_id, model, data, usage_of(tokens))


def _first_given(*values: str | list[str] | None) -> str | list[str] | None:
    return next((v for v in values if v is not None), None)


async def rerank(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, RerankRequest)
    model = ctx.served(body.model, "score")
    model.require("score", "/v1/rerank")
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    if not documents:
        raise bad_request("at least one document must be given", "documents")
    request_id = new_request_id("rerank")
    scores, tokens = await _scores(
        ctx, model, request, request_id, [body.query], documents, body.truncate_prompt_tokens
    )
    ranked = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)
    if body.top_n:
        ranked = ranked[: body.top_n]
    results = [
        {
            "index": i,
            "document": {"text": documents[i]} if body.return_documents else None,
            "relevance_score": scores[i],
        }
        for i in ranked
    ]
    return json_response(
        {
            "id": request_id,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }
    )


async def _scores(
    ctx: ServingContext,
    model: ServedModel,
    request: Request,
    request_id: str,
    firsts: list[str],
    seconds: list[str],
    truncate: int | None,
) -> tuple[list[float], int]:
    """One score per pair (one first text scores against every second text), and the prompt
    tokens counted for them as vLLM counts: each pair's for a cross-encoder, each text's once
    for an embedding model."""
    pairs = list(zip(firsts * len(seconds) if len(firsts) == 1 else firsts, seconds, strict=True))
    if model.task == "classify":
        inputs = [pair_input(model, a, b, truncate=truncate) for a, b in pairs]
        outputs = await run(ctx, model, request, request_id, inputs, "classify")
        return [sigmoid(float(o.values[0])) for o in outputs], sum(o.prompt_tokens for o in outputs)
    # An embedding model: each distinct text is embedded once.
    texts = list(dict.fromkeys(firsts + seconds))
    inputs = [await text_input(model, t, truncate=truncate) for t in texts]
    outputs = await run(ctx, model, request, request_id, inputs, "embed")
    by_text = dict(zip(texts, outputs, strict=True))
    scores = [cosine(by_text[a].values, by_text[b].values) for a, b in pairs]
    return scores, sum(by_text[t].prompt_tokens for t in firsts + seconds)
