"""Image inputs: fetching (SSRF-safe), decoding, and per-model-family preprocessing that equals
transformers' image processors."""

from .base import ImageProcessor, ProcessedImages, expand_placeholders
from .cache import ProcessedImageCache
from .decode import decode_image
from .errors import MediaError
from .fetch import FetchPolicy, ImageFetcher
from .registry import create_processor, load_processor, processor_class
from .service import ImagePreprocessor

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
