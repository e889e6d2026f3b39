"""The image stage of preparation: fetch, decode and preprocess a chat request's images.

Runs before the template: the processed sizes decide how many placeholder tokens each image's
single template token expands to once the prompt is tokenized.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from herdsman.multimodal.errors import MediaError
from herdsman.observability import tracing
from herdsman.pipeline.errors import InvalidRequest

if TYPE_CHECKING:  # the processors import numpy and Pillow: only a vision model's gateway does
    from herdsman.multimodal.fetch import ImageFetcher
    from herdsman.multimodal.service import ImagePreprocessor


@dataclass(slots=True)
class ImageSupport:
    """What a vision model's gateway needs: how to get images and what they become."""

    fetcher: ImageFetcher
    preprocessor: ImagePreprocessor
    image_token_id: int


class ImageInputs(msgspec.Struct, kw_only=True):
    """Processed images of one request, and where they sit in its token ids."""

    pixel_values: Any  # np.ndarray, float32
    model_specific: dict[str, Any]  # name -> np.ndarray
    image_token_id: int
    placeholders: list[tuple[int, int]] = msgspec.field(default_factory=list)
    hashes: list[str] = msgspec.field(default_factory=list)
    counts: list[Any] = msgspec.field(default_factory=list)
    # The processor's uint8 -> float table (ImageProcessor.lut, (3, 256)): an engine that
    # normalizes on device (vLLM's mm_device_do_normalize) is sent the raw values through it.
    pixel_lut: Any = None


def image_urls(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(url, param) of every image_url part, in prompt order."""
    found: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                param = f"messages[{i}].content[{j}].image_url"
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if not isinstance(url, str) or not url:
                    raise InvalidRequest("an image_url part needs a url", param)
                found.append((url, param))
    return found


async def load_images(
    support: ImageSupport | None,
    messages: list[dict[str, Any]],
    *,
    max_images: int = 8,
    fetch_timeout: float = 30.0,
) -> ImageInputs | None:
    urls = image_urls(messages)
    if not urls:
        return None
    if support is None:
        raise InvalidRequest("this model does not take image inputs", urls[0][1])
    if len(urls) > max_images:
        raise InvalidRequest(
            f"a request may carry at most {max_images} images; this one has {len(urls)}",
            urls[max_images][1],
        )
    try:
        started = time.perf_counter()
        data = await _fetch_all(support.fetcher, urls, fetch_timeout)
        fetched = time.perf_counter()
        processed = await support.preprocessor.process(data, [p for _, p in urls])
        if tracing.enabled():
            tracing.stage("image.fetch", started, fetched, {"herdsman.images": len(urls)})
            tracing.stage("image.preprocess", fetched, time.perf_counter())
    except MediaError as exc:
        raise InvalidRequest(str(exc), exc.param) from exc
    counts: list[Any] = (
        list(processed.placeholder_tokens)
        if processed.placeholder_tokens is not None
        else list(processed.num_placeholders)
    )
    return ImageInputs(
        pixel_values=processed.pixel_values,
        model_specific=dict(processed.model_specific),
        image_token_id=support.image_token_id,
        hashes=[hashlib.blake2b(d, digest_size=16).hexdigest() for d in data],
        counts=counts,
        pixel_lut=getattr(support.preprocessor.processor, "lut", None),
    )


async def _fetch_all(
    fetcher: ImageFetcher, urls: list[tuple[str, str]], budget: float
) -> list[bytes]:
    """Every image of the request, fetched at once, all within ``budget`` seconds; the first
    failure cancels the other fetches."""
    try:
        async with asyncio.timeout(budget), asyncio.TaskGroup() as group:
            tasks = [group.create_task(fetcher.fetch(url, param=param)) for url, param in urls]
    except TimeoutError:
        raise InvalidRequest(
            f"fetching the request's images took longer than {budget:g}s", urls[0][1]
        ) from None
    except BaseExceptionGroup as group_error:
        # The first error is the client's answer (a MediaError names the image part).
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]
