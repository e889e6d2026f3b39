"""What a model does (generate, embed, classify), from what its engine says and its config.json.

The engine's GetModelInfo says whether the model generates; SGLang also states a classifier's
labels, vLLM's protocol does not, so they are read from the model directory's config.json when the
gateway has it (the tokenizer directory an engine sends holds it too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import msgspec

from herdsman.engines import ModelInfo

log = logging.getLogger(__name__)


class ModelTask(msgspec.Struct, frozen=True):
    task: str = "generate"
    labels: tuple[str, ...] = ()
    matryoshka: tuple[int, ...] | None = None


def _config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return {}
    return config if isinstance(config, dict) else {}


def _labels(count: int, id2label: dict[str, Any]) -> tuple[str, ...]:
    count = max(count, len(id2label))
    return tuple(str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count))


def _is_classifier(architectures: list[str]) -> bool:
    return any(
        a.endswith(("ForSequenceClassification", "ForRewardModeling")) for a in architectures
    )


def model_task(info: ModelInfo, directory: Path) -> ModelTask:
    if info.is_generation:
        return ModelTask()
    config = _config(directory)
    architectures = list(info.architectures) or list(config.get("architectures") or ())
    id2label = info.id2label or {str(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    count = info.num_labels or int(config.get("num_labels") or 0)
    if info.num_labels or info.id2label or _is_classifier(architectures):
        return ModelTask("classify", _labels(count or len(id2label) or 1, id2label))
    return ModelTask("embed", matryoshka=_matryoshka(config))


def _matryoshka(config: dict[str, Any]) -> tuple[int, ...] | None:
    """Dimensions the embedding may be cut to, as vLLM reads them (``matryoshka_dimensions``,
    or ``is_matryoshka`` for any)."""
    dims = config.get("matryoshka_dimensions")
    if isinstance(dims, list) and dims:
        return tuple(int(d) for d in dims)
    if config.get("is_matryoshka"):
        return ()
    return None
