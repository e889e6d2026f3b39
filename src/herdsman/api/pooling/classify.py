"""POST /v1/classify (also /classify): a sequence classifier's label and probabilities per
input, in vLLM's shape, labels from the model's ``id2label``."""

from __future__ import annotations

from typing import Literal

import msgspec

from herdsman.api.bodies import decode_body
from herdsman.api.errors import bad_request
from herdsman.api.pooling.common import list_response, run, sigmoid, softmax, usage
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.pooling import text_input
from herdsman.pipeline.prepare import new_request_id


class ClassifyRequest(msgspec.Struct, kw_only=True):
    input: str | list[str]
    model: str | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None


async def classify(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, ClassifyRequest)
    model = ctx.served(body.model, "classify")
    model.require("classify", "/v1/classify")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise bad_request("'input' must hold at least one text", "input")
    inputs = [
        await text_input(model, t, truncate=body.truncate_prompt_tokens, side=body.truncation_side)
        for t in texts
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
