"""Image bytes to processed tensors off the event loop, with a content-hash cache.

Runs in a thread pool, not a process pool: the heavy steps (Pillow decode and resize, numpy
gathers and transposes) release the GIL, and the results are large arrays that a process pool
would have to pickle back across a pipe, costing about as much as the work itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .base import ImageProcessor, ProcessedImages
from .cache import ProcessedImageCache, content_key
from .decode import DEFAULT_MAX_PIXELS, decode_image


def merge(results: Sequence[ProcessedImages]) -> ProcessedImages:
    """Per-image results into one request's batch (transformers concatenates along axis 0)."""
    if len(results) == 1:
        return results[0]
    pixel_values = np.concatenate([r.pixel_values for r in results], axis=0)
    keys = results[0].model_specific.keys()
    specific = {k: np.concatenate([r.model_specific[k] for r in results], axis=0) for k in keys}
    counts = [c for r in results for c in r.num_placeholders]
    tokens = None
    if all(r.placeholder_tokens is not None for r in results):
        tokens = [t for r in results for t in (r.placeholder_tokens or [])]
    return ProcessedImages(pixel_values, specific, counts, tokens)


class ImagePreprocessor:
    def __init__(
        self,
        processor: ImageProcessor,
        *,
        processor_id: str = "",
        cache: ProcessedImageCache | None = None,
        executor: ThreadPoolExecutor | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.processor = processor
        self.processor_id = processor_id or type(processor).__name__
        self.cache = cache if cache is not None else ProcessedImageCache()
        self.executor = executor or ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="herdsman-image"
        )
        self.max_pixels = max_pixels

    def process_one_sync(self, data: bytes, param: str | None = None) -> ProcessedImages:
        key = content_key(data, self.processor_id)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        img = decode_image(data, max_pixels=self.max_pixels, param=param)
        result = self.processor.preprocess([img])
        self.cache.put(key, result)
        return result

    async def process(
        self, images: Sequence[bytes], params: Sequence[str | None] | None = None
    ) -> ProcessedImages:
        loop = asyncio.get_running_loop()
        params = params or [None] * len(images)
        results = []
        for data, param in zip(images, params, strict=True):
            # A hit is answered on the loop: no thread hop for a repeated image.
            hit = self.cache.get(content_key(data, self.processor_id))
            if hit is None:
                hit = await loop.run_in_executor(self.executor, self.process_one_sync, data, param)
            results.append(hit)
        return merge(results)
