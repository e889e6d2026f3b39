"""What the pooling endpoints share: usage, the activation of a classifier's scores."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from herdsman.api.bodies import json_response, routing_key
from herdsman.engines import EmbedOutput
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.pooling import PoolingInput, pool

if TYPE_CHECKING:  # imported where used: a generating model's gateway never loads numpy
    import numpy as np


async def run(
    ctx: ServingContext,
    model: ServedModel,
    request: Request,
    request_id: str,
    inputs: list[PoolingInput],
    task: str,
) -> list[EmbedOutput]:
    """The engine's output for each input, for this HTTP request (its arrival, routing key)."""
    return await pool(
        ctx,
        model,
        request_id,
        inputs,
        task=task,
        received_at=request.received_at,
        routing_key=routing_key(request),
    )


def list_response(
    request_id: str, model: ServedModel, data: list[dict[str, object]], usage: dict[str, object]
) -> Response:
    """vLLM's envelope of embeddings, scores and classifications."""
    return json_response(
        {
            "id": request_id,
            "object": "list",
            "created": int(time.time()),
            "model": model.name,
            "data": data,
            "usage": usage,
        }
    )


def usage(outputs: Sequence[EmbedOutput]) -> dict[str, object]:
    return usage_of(sum(o.prompt_tokens for o in outputs))


def usage_of(prompt: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """vLLM's score of two embeddings (torch's cosine_similarity, its 1e-8 floor on each norm),
    computed in float64 from the engine's float32 values."""
    import numpy as np

    x, y = a.astype(np.float64), b.astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"embeddings of different sizes: {x.shape[0]} and {y.shape[0]}")
    norms = max(float(np.linalg.norm(x)), 1e-8) * max(float(np.linalg.norm(y)), 1e-8)
    return float(np.dot(x, y)) / norms
