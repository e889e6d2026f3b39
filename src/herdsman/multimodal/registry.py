"""Pick a model family's image processor from its preprocessor_config.json (and config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import ImageProcessor

_BY_PROCESSOR_TYPE: dict[str, type[ImageProcessor]] = {}
_BY_MODEL_TYPE: dict[str, type[ImageProcessor]] = {}


def register(cls: type[ImageProcessor]) -> type[ImageProcessor]:
    for name in cls.processor_types:
        _BY_PROCESSOR_TYPE[name] = cls
    for name in cls.model_types:
        _BY_MODEL_TYPE[name] = cls
    return cls


def _ensure_loaded() -> None:
    if _BY_PROCESSOR_TYPE:
        return
    # Imported lazily so importing the registry does not import every family.
    from . import gemma3, llama4, llava, llava_next, mllama, pixtral, qwen2_vl

    for cls in (
        qwen2_vl.Qwen2VLProcessor,
        llava.ClipProcessor,
        llava_next.LlavaNextProcessor,
        pixtral.PixtralProcessor,
        gemma3.Gemma3Processor,
        mllama.MllamaProcessor,
        llama4.Llama4Processor,
    ):
        register(cls)


def processor_class(
    *, image_processor_type: str | None = None, model_type: str | None = None
) -> type[ImageProcessor]:
    """`model_type` wins: LLaVA-NeXT and LLaVA-1.5 both name a CLIP-like processor type."""
    _ensure_loaded()
    if model_type and model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    if image_processor_type and image_processor_type in _BY_PROCESSOR_TYPE:
        return _BY_PROCESSOR_TYPE[image_processor_type]
    raise KeyError(
        f"no image processor for model_type={model_type!r} "
        f"image_processor_type={image_processor_type!r}"
    )


def create_processor(
    preprocessor_config: dict[str, Any], model_config: dict[str, Any] | None = None
) -> ImageProcessor:
    """Build a processor; values the model's config.json holds (patch size, feature strategy)
    are merged in under the names the processors read."""
    cfg = dict(preprocessor_config)
    model_type = None
    if model_config:
        model_type = model_config.get("model_type")
        vision = model_config.get("vision_config") or {}
        cfg.setdefault("vision_patch_size", vision.get("patch_size", cfg.get("patch_size", 14)))
        for key in ("vision_feature_select_strategy", "image_token_index", "image_seq_length"):
            if key in model_config:
                cfg.setdefault(key, model_config[key])
    cls = processor_class(
        image_processor_type=cfg.get("image_processor_type"), model_type=model_type
    )
    return cls(cfg)


def load_processor(model_dir: str | Path) -> ImageProcessor:
    model_dir = Path(model_dir)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    cfg_path = model_dir / "config.json"
    model_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
    return create_processor(pre, model_cfg)
