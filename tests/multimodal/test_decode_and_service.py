"""Decoding (formats, modes, EXIF, limits), placeholder expansion, the cache and the async path."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herdsman.multimodal import (
    ImagePreprocessor,
    MediaError,
    ProcessedImageCache,
    ProcessedImages,
    create_processor,
    decode_image,
    expand_placeholders,
)

IMAGES = Path(__file__).parent / "images"
QWEN = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_processor_type": "Qwen2VLImageProcessor",
}


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_applied() -> None:
    raw = Image.open(IMAGES / "exif_rot6.jpg")
    assert raw.size == (70, 104)  # stored sideways
    img = decode_image((IMAGES / "exif_rot6.jpg").read_bytes())
    assert img.size == (104, 70) and img.mode == "RGB"


def test_rgba_alpha_dropped_not_composited() -> None:
    """transformers' load_image does convert("RGB"): alpha is discarded, colour kept."""
    rgba = Image.new("RGBA", (4, 4), (200, 10, 10, 0))
    img = decode_image(encode(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (200, 10, 10)
    # vLLM's way, on request: composited onto a background.
    half = Image.new("RGBA", (4, 4), (200, 10, 10, 128))
    img = decode_image(encode(half, "PNG"), alpha_background=(255, 255, 255))
    assert img.getpixel((0, 0)) == (227, 132, 132)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("P", "PNG"), ("RGBA", "WEBP"), ("RGB", "JPEG"), ("LA", "PNG"), ("1", "PNG")],
)
def test_modes_and_formats(mode: str, fmt: str) -> None:
    src = Image.open(IMAGES / "square.png").convert(mode)
    img = decode_image(encode(src, fmt))
    assert img.mode == "RGB" and img.size == (96, 96)


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_refusals() -> None:
    for bad in (b"", b"not an image", encode(Image.new("RGB", (8, 8)), "BMP")):
        with pytest.raises(MediaError) as e:
            decode_image(bad, param="p")
        assert e.value.code == "image_undecodable" and e.value.param == "p"
    truncated = (IMAGES / "odd_333x217.jpg").read_bytes()[:500]
    with pytest.raises(MediaError):
        decode_image(truncated)
    big = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(MediaError) as e:
        decode_image(big, max_pixels=300 * 299)
    assert e.value.code == "image_too_many_pixels"


def test_1x1_and_extreme_aspect() -> None:
    proc = create_processor(QWEN)
    out = proc.preprocess([Image.new("RGB", (1, 1), (1, 2, 3))])
    assert out.model_specific["image_grid_thw"].tolist() == [[1, 4, 4]]
    with pytest.raises(MediaError):
        proc.preprocess([Image.new("RGB", (1000, 4))])


def test_expand_placeholders() -> None:
    ids, ranges = expand_placeholders([1, 9, 2, 9, 3], 9, [3, 2])
    assert ids == [1, 9, 9, 9, 2, 9, 9, 3]
    assert ranges == [(1, 3), (5, 2)]
    ids, ranges = expand_placeholders([9, 5], 9, [[7, 9, 9, 8]])
    assert ids == [7, 9, 9, 8, 5] and ranges == [(0, 4)]
    with pytest.raises(ValueError):
        expand_placeholders([9, 9], 9, [1])
    with pytest.raises(ValueError):
        expand_placeholders([9], 9, [1, 1])


def test_multi_image_batch_matches_concatenation() -> None:
    proc = create_processor(QWEN)
    a = decode_image((IMAGES / "square.png").read_bytes())
    b = decode_image((IMAGES / "wide.png").read_bytes())
    both = proc.preprocess([a, b])
    one, two = proc.preprocess([a]), proc.preprocess([b])
    np.testing.assert_array_equal(
        both.pixel_values, np.concatenate([one.pixel_values, two.pixel_values])
    )
    assert both.num_placeholders == one.num_placeholders + two.num_placeholders


def test_cache_bounded_by_bytes() -> None:
    cache = ProcessedImageCache(max_bytes=1000)
    item = lambda n: ProcessedImages(np.zeros(n, np.uint8), {}, [1])  # noqa: E731
    cache.put("a", item(400))
    cache.put("b", item(400))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", item(400))
    assert cache.get("b") is None and cache.get("a") is not None and cache.nbytes == 800
    cache.put("huge", item(5000))
    assert cache.get("huge") is None


async def test_async_preprocess_caches_and_runs_off_loop() -> None:
    pre = ImagePreprocessor(create_processor(QWEN), processor_id="qwen")
    data = (IMAGES / "odd_333x217.jpg").read_bytes()
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = pre.processor.preprocess

    def spy(images):  # type: ignore[no-untyped-def]
        seen.append(threading.get_ident())
        return real(images)

    pre.processor.preprocess = spy  # type: ignore[method-assign]
    first = await pre.process([data])
    second = await pre.process([data, data])
    assert seen and all(t != loop_thread for t in seen)
    assert len(seen) == 1  # decoded and processed once
    assert second.pixel_values.shape[0] == 2 * first.pixel_values.shape[0]
    assert pre.cache.hits >= 2


async def test_concurrent_requests_share_one_processing() -> None:
    pre = ImagePreprocessor(create_processor(QWEN), processor_id="qwen")
    calls = 0
    real = pre.processor.preprocess

    def counting(images):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        return real(images)

    pre.processor.preprocess = counting  # type: ignore[method-assign]
    data = (IMAGES / "square.png").read_bytes()
    outs = await asyncio.gather(*(pre.process([data]) for _ in range(5)))
    assert calls == 1 and all(o is outs[0] for o in outs)


async def test_a_requester_that_leaves_does_not_cancel_the_shared_work() -> None:
    """Two requests with the same image share one processing; the first one's client going away
    (its task cancelled) must leave the second with its result, not a CancelledError."""
    pre = ImagePreprocessor(create_processor(QWEN), processor_id="qwen")
    started, release = threading.Event(), threading.Event()
    real = pre.processor.preprocess

    def held(images):  # type: ignore[no-untyped-def]
        started.set()
        assert release.wait(30)
        return real(images)

    pre.processor.preprocess = held  # type: ignore[method-assign]
    data = (IMAGES / "square.png").read_bytes()
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(pre.process([data]))
    assert await loop.run_in_executor(None, started.wait, 30)
    second = asyncio.create_task(pre.process([data]))
    await asyncio.sleep(0)  # the second request is now waiting on the shared work
    first.cancel()
    release.set()
    result = await asyncio.wait_for(second, 30)
    assert isinstance(result, ProcessedImages) and result.pixel_values.size > 0
    assert first.cancelled()
    assert not pre._inflight
    # The work finished for the one who stayed, and a third request is a cache hit.
    assert (await pre.process([data])).pixel_values.shape == result.pixel_values.shape


async def test_loop_stays_responsive_while_processing() -> None:
    pre = ImagePreprocessor(create_processor(QWEN), processor_id="qwen")
    big = encode(Image.new("RGB", (2000, 1500), (9, 99, 199)), "PNG")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    t = asyncio.create_task(ticker())
    start = time.perf_counter()
    await pre.process([big])
    elapsed = time.perf_counter() - start
    t.cancel()
    assert ticks >= max(1, int(elapsed / 0.005) // 4)


async def test_decode_error_surfaces_as_media_error() -> None:
    pre = ImagePreprocessor(create_processor(QWEN))
    with pytest.raises(MediaError) as e:
        await pre.process([b"garbage"], ["messages[0].content[0].image_url"])
    assert e.value.param == "messages[0].content[0].image_url"
