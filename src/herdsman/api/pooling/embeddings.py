"""POST /v1/embeddings: OpenAI's shape, with vLLM's truncate_prompt_tokens."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from herdsman.api.bodies import decode_body, split_inputs
from herdsman.api.errors import bad_request
from herdsman.api.pooling.common import list_response, run, usage
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.pooling import PoolingInput, ids_input, text_input
from herdsman.pipeline.prepare import new_request_id

if TYPE_CHECKING:  # imported where used: a generating model's gateway never loads numpy
    import numpy as np

# At most this many inputs per request (OpenAI's limit).
MAX_INPUTS = 2048


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    # A string, token ids, or a list of either (checked in _inputs: msgspec takes one list type).
    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    add_special_tokens: bool = True


async def embeddings(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, EmbeddingRequest)
    model = ctx.served(body.model, "embed")
    model.require("embed", "/v1/embeddings")
    _check_dimensions(model, body.dimensions)
    inputs = await _inputs(model, body)
    request_id = new_request_id("embd")
    outputs = await run(ctx, model, request, request_id, inputs, "embed")
    data = [
        {
            "index": i,
            "object": "embedding",
            "embedding": _encoded(_cut(out.values, body.dimensions), body.encoding_format),
        }
        for i, out in enumerate(outputs)
    ]
    return list_response(request_id, model, data, usage(outputs))


async def _inputs(model: ServedModel, body: EmbeddingRequest) -> list[PoolingInput]:
    items, _batch = split_inputs(body.input, "input")
    if len(items) > MAX_INPUTS:
        raise bad_request(f"'input' has {len(items)} items; at most {MAX_INPUTS}", "input")
    truncate = body.truncate_prompt_tokens
    return [
        await _text(model, item, body)
        if isinstance(item, str)
        else ids_input(model, item, truncate=truncate, side=body.truncation_side)
        for item in items
    ]


async def _text(model: ServedModel, text: str, body: EmbeddingRequest) -> PoolingInput:
    return await text_input(
        model,
        text,
        truncate=body.truncate_prompt_tokens,
        side=body.truncation_side,
        add_special_tokens=body.add_special_tokens,
    )


def _check_dimensions(model: ServedModel, dimensions: int | None) -> None:
    if dimensions is None:
        return
    if model.matryoshka is None:
        raise bad_request(
            f"the model '{model.name}' does not support matryoshka representation: changing "
            "its output dimensions would give poor embeddings",
            "dimensions",
        )
    if model.matryoshka and dimensions not in model.matryoshka:
        allowed = ", ".join(map(str, model.matryoshka))
        raise bad_request(
            f"the model '{model.name}' supports dimensions {allowed}, not {dimensions}",
            "dimensions",
        )


def _cut(values: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` values, normalised again (a Matryoshka embedding's prefix)."""
    if dimensions is None:
        return values
    if dimensions > len(values):
        raise bad_request(
            f"dimensions ({dimensions}) is more than the model's {len(values)}", "dimensions"
        )
    import numpy as np

    cut = values[:dimensions].astype(np.float64)
    norm = float(np.linalg.norm(cut))
    return (cut / norm if norm > 0 else cut).astype(np.float32)


def _encoded(values: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's format (its SDKs ask for it by default): little-endian float32s.
        return base64.b64encode(values.astype("<f4", copy=False).tobytes()).decode("ascii")
    return values.tolist()
