"""POST /v1/classify (also /classify): a sequence classifier's label and probabilities per
input, in vLLM's shape, labels from the model's ``id2label``."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from herdsman.api.bodies import decode_body, split_inputs
from herdsman.api.pooling.common import list_response, run, sigmoid, softmax, usage
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.pooling import ids_input, text_input
from herdsman.pipeline.prepare import new_request_id


class ClassifyRequest(msgspec.Struct, kw_only=True):
    # A string, token ids, or a list of either (checked by split_inputs).
    input: str | list[Any]
    model: str | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None


async def classify(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, ClassifyRequest)
    model = ctx.served(body.model, "classify")
    model.require("classify", "/v1/classify")
    items, _batch = split_inputs(body.input, "input")
    truncate, side = body.truncate_prompt_tokens, body.truncation_side
    inputs = [
        await text_input(model, item, truncate=truncate, side=side)
        if isinstance(item, str)
        else ids_input(model, item, truncate=truncate, side=side)
        for item in items
    ]
    request_id = new_request_id("classify")
    outputs = await run(ctx, model, request, request_id, inputs, "classify")
    labels = model.labels
    data = []
    for i, out in enumerate(outputs):
        logits = out.values.tolist()
        # One label: its probability (vLLM's sigmoid); several: a distribution over them.
        probs = [sigmoid(logits[0])] if len(logits) == 1 else softmax(logits)
        best = max(range(len(probs)), key=probs.__getitem__)
        label = labels[best] if best < len(labels) else f"LABEL_{best}"
        data.append({"index": i, "label": label, "probs": probs, "num_classes": len(probs)})
    return list_response(request_id, model, data, usage(outputs))
