"""Image inputs: fetching (SSRF-safe), decoding, and per-model-family preprocessing that equals
transformers' image processors.

The names below are imported on first use (PEP 562), not with the package: the pipeline imports
the package's light modules (errors, fetch, placeholders) for every model, and numpy and Pillow
(~14 MB of a gateway process) only belong in gateways that serve a vision model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ImageProcessor, ProcessedImages
    from .cache import ProcessedImageCache
    from .decode import decode_image
    from .errors import MediaError
    from .fetch import FetchPolicy, ImageFetcher
    from .placeholders import expand_placeholders
    from .registry import create_processor, load_processor, processor_class
    from .service import ImagePreprocessor

_HOMES = {
    "FetchPolicy": "fetch",
    "ImageFetcher": "fetch",
    "ImagePreprocessor": "service",
    "ImageProcessor": "base",
    "MediaError": "errors",
    "ProcessedImageCache": "cache",
    "ProcessedImages": "base",
    "create_processor": "registry",
    "decode_image": "decode",
    "expand_placeholders": "placeholders",
    "load_processor": "registry",
    "processor_class": "registry",
}

__all__ = [
    "FetchPolicy",
    "ImageFetcher",
    "ImagePreprocessor",
    "ImageProcessor",
    "MediaError",
    "ProcessedImageCache",
    "ProcessedImages",
    "create_processor",
    "decode_image",
    "expand_placeholders",
    "load_processor",
    "processor_class",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:  # a submodule (`from herdsman.multimodal import base`) is imported as usual
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
