"""Image bytes to processed tensors off the event loop, with a content-hash cache.

Runs in a thread pool, not a process pool: the heavy steps (Pillow decode and resize, numpy
gathers and transposes) release the GIL, and the results are large arrays that a process pool
would have to pickle back across a pipe, costing about as much as the work itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .base import ImageProcessor, ProcessedImages
from .cache import ProcessedImageCache, content_key
from .decode import DEFAULT_MAX_PIXELS, decode_image


class ImagePreprocessor:
    def __init__(
        self,
        processor: ImageProcessor,
        *,
        processor_id: str = "",
        cache: ProcessedImageCache | None = None,
        executor: ThreadPoolExecutor | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
    ) -> None:
        self.processor = processor
        self.processor_id = processor_id or type(processor).__name__
        self.cache = cache if cache is not None else ProcessedImageCache()
        self.executor = executor or ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="herdsman-image"
        )
        self.max_pixels = max_pixels
        self.alpha_background = alpha_background
        # Same image in concurrent requests: the later ones wait for the first one's work.
        self._inflight: dict[str, asyncio.Future[ProcessedImages]] = {}

    def process_one_sync(self, data: bytes, param: str | None = None) -> ProcessedImages:
        key = content_key(data, self.processor_id)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        img = decode_image(
            data, max_pixels=self.max_pixels, param=param, alpha_background=self.alpha_background
        )
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
            key = content_key(data, self.processor_id)
            # A hit is answered on the loop: no thread hop for a repeated image.
            hit = self.cache.get(key)
            if hit is None:
                pending = self._inflight.get(key)
                if pending is None:
                    pending = loop.run_in_executor(
                        self.executor, self.process_one_sync, data, param
                    )
                    self._inflight[key] = pending
                    pending.add_done_callback(partial(self._settled, key))
                # Every requester waits through a shield, the first one too: a requester that
                # goes away must not cancel the work the others are waiting for.
                hit = await asyncio.shield(pending)
            results.append(hit)
        return self.processor.combine(results)

    def _settled(self, key: str, future: asyncio.Future[ProcessedImages]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here: every requester may have gone away
