"""The C extension `herdsman.multimodal._resample` against Pillow, byte for byte.

Pillow's `Image.resize` is the oracle: transformers' slow image processors call it, and the
extension must reproduce it exactly (same fixed-point coefficients, same pass order, same
rounding) for every convolution filter, for L and RGB images, with the SIMD kernels and with the
portable ones.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from herdsman.multimodal import _resample, base, create_processor
from herdsman.multimodal.base import apply_lut_chw, normalize_lut, resize, resize_array

CONFIGS = Path(__file__).parent / "configs"
FILTERS = [1, 2, 3, 4, 5]  # LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING (NEAREST stays on Pillow)
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pixels(seed: int, h: int, w: int, channels: int, kind: int) -> np.ndarray:
    """Random noise, or hard black/white edges (which push filters to their clipping range)."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == 1:
        arr = np.where(arr > 127, 255, 0).astype(np.uint8)
    return arr


def ours(arr: np.ndarray, h: int, w: int, resample: int, scalar: bool) -> np.ndarray:
    out = np.empty((h, w, *arr.shape[2:]), dtype=np.uint8)
    _resample.resample(arr, out, resample, scalar=scalar)
    return out


def pillow(arr: np.ndarray, h: int, w: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=resample))


def ours_arrow(img: Image.Image, h: int, w: int, resample: int, scalar: bool) -> np.ndarray:
    """The same from Pillow's own memory (RGB is stored RGBX) through the Arrow interface."""
    channels = len(img.getbands())
    out = np.empty((h, w, 3) if channels == 3 else (h, w), dtype=np.uint8)
    _schema, array = img.__arrow_c_array__()
    _resample.resample_arrow(array, img.height, img.width, channels, out, resample, scalar=scalar)
    return out


def check(arr: np.ndarray, h: int, w: int, resample: int) -> None:
    img = Image.fromarray(arr)
    want = np.asarray(img.resize((w, h), resample=resample))
    for scalar in (False, True):
        for source, got in (
            ("numpy", ours(arr, h, w, resample, scalar)),
            ("arrow", ours_arrow(img, h, w, resample, scalar)),
        ):
            assert got.shape == want.shape
            if not np.array_equal(got, want):
                diff = np.abs(got.astype(int) - want.astype(int))
                pytest.fail(
                    f"{arr.shape} -> {(h, w)} filter {resample} scalar={scalar} {source}: "
                    f"{int((diff > 0).sum())} bytes differ, max {int(diff.max())}"
                )


side = st.integers(1, 90)


@SETTINGS
@given(
    h=side,
    w=side,
    oh=st.integers(1, 180),
    ow=st.integers(1, 180),
    resample=st.sampled_from(FILTERS),
    channels=st.sampled_from([1, 3]),
    kind=st.integers(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
@example(h=2, w=2, oh=1, ow=33, resample=1, channels=3, kind=0, seed=0)  # vertical pass first
@example(h=90, w=90, oh=1, ow=1, resample=3, channels=3, kind=1, seed=1)
@example(h=1, w=1, oh=180, ow=180, resample=1, channels=1, kind=0, seed=2)
def test_random_sizes_match_pillow(h, w, oh, ow, resample, channels, kind, seed) -> None:
    check(pixels(seed, h, w, channels, kind), oh, ow, resample)


@SETTINGS
@given(
    long=st.integers(100, 1200),
    short=st.integers(1, 4),
    out_long=st.integers(1, 300),
    out_short=st.integers(1, 6),
    tall=st.booleans(),
    resample=st.sampled_from(FILTERS),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_extreme_aspect_ratios_and_large_factors(
    long, short, out_long, out_short, tall, resample, channels, seed
) -> None:
    h, w, oh, ow = (
        (long, short, out_long, out_short) if tall else (short, long, out_short, out_long)
    )
    check(pixels(seed, h, w, channels, 0), oh, ow, resample)


# Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width
# does; the intermediate is rounded to 8 bits, so the order shows in the output.
@pytest.mark.parametrize(
    ("h", "w", "oh", "ow"),
    [
        (100, 100, 2, 51),  # dh = 98 = 2 * dw: horizontal first
        (100, 100, 1, 51),  # dh = 99 > 98: vertical first
        (100, 100, 50, 200),  # width grows, height shrinks: vertical first
        (100, 100, 200, 50),  # height grows: horizontal first
        (100, 40, 50, 10),
        (100, 40, 20, 10),
        (1, 300, 1, 7),  # one row: horizontal only
        (300, 1, 7, 1),  # one column: vertical only
        (3, 1, 1, 300),
    ],
)
@pytest.mark.parametrize("resample", FILTERS)
def test_pass_order_and_edge_shapes(h, w, oh, ow, resample) -> None:
    for channels in (1, 3):
        check(pixels(h * w + oh, h, w, channels, 0), oh, ow, resample)


@pytest.mark.parametrize(
    ("size", "target"), [((1920, 1080), (1932, 1092)), ((777, 333), (336, 784))]
)
def test_photo_sized_images(size: tuple[int, int], target: tuple[int, int]) -> None:
    """Wide rows exercise the 32-byte vertical kernel and the 4-pixel horizontal blocks."""
    src = Image.open(Path(__file__).parent / "images" / "source" / "rocket.jpg").convert("RGB")
    arr = np.asarray(src.resize(size, Image.Resampling.BICUBIC))
    for resample in (3, 1):
        check(arr, target[1], target[0], resample)


def test_resize_helpers_match_pillow() -> None:
    arr = pixels(7, 37, 53, 3, 0)
    img = Image.fromarray(arr)
    for resample in [0, *FILTERS]:
        want = np.asarray(img.resize((20, 61), resample=resample))
        assert np.array_equal(resize_array(img, 61, 20, resample), want)
        out = resize(img, 61, 20, resample)
        assert out.mode == "RGB"
        assert np.array_equal(np.asarray(out), want)
    assert resize(img, 37, 53, 3) is img
    gray = img.convert("L")
    assert np.array_equal(resize_array(gray, 9, 70, 2), np.asarray(gray.resize((70, 9), 2)))
    rgba = img.convert("RGBA")  # premultiplied in Pillow: stays on Pillow
    assert np.array_equal(resize_array(rgba, 9, 70, 2), np.asarray(rgba.resize((70, 9), 2)))


def test_large_images_in_several_memory_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow stores images over 16 MB in several blocks and will not export them via Arrow;
    resize_array reads them through Image.getim() instead, or failing that a numpy copy."""
    img = Image.fromarray(np.tile(pixels(4, 64, 64, 3, 0), (35, 35, 1)))  # 2240 x 2240
    with pytest.raises(ValueError):
        img.__arrow_c_array__()
    for h, w in ((61, 83), (2241, 2239), (700, 2240)):  # downscale, H first, V first
        want = np.asarray(img.resize((w, h), 3))
        for scalar in (False, True):
            got = np.empty((h, w, 3), np.uint8)
            _resample.resample_pillow(img.getim(), 2240, 2240, 3, got, 3, scalar=scalar)
            assert np.array_equal(got, want)
        assert np.array_equal(resize_array(img, h, w, 3), want)
    with pytest.raises(ValueError, match="not a Pillow"):  # the header must match the image
        _resample.resample_pillow(img.getim(), 2240, 2239, 3, got, 3)
    monkeypatch.setattr(_resample, "resample_pillow", _reject)
    assert np.array_equal(resize_array(img, 61, 83, 3), np.asarray(img.resize((83, 61), 3)))


def _reject(*args: object, **kwargs: object) -> None:
    raise ValueError("not a Pillow image")


def test_lut_chw_matches_numpy_on_views() -> None:
    lut = normalize_lut(1 / 255, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26, 0.27))
    arr = pixels(3, 50, 60, 3, 0)
    for view in (arr, arr[5:41, 7:50], arr[::2, ::3]):
        got = np.empty((3, *view.shape[:2]), dtype=np.float32)
        _resample.lut_chw(view, lut, got)
        want = np.stack([lut[c][view[:, :, c]] for c in range(3)])
        assert np.array_equal(got, want)


def test_qwen_patches_matches_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = json.loads((CONFIGS / "qwen2_5_vl" / "preprocessor_config.json").read_text())
    proc = create_processor(cfg)
    img = Image.fromarray(pixels(11, 300, 200, 3, 0))
    fast = proc.preprocess([img])
    monkeypatch.setattr(base, "_resample", None)
    monkeypatch.setattr(base, "_warned_slow", True)
    slow = proc.preprocess([img])
    assert np.array_equal(fast.pixel_values, slow.pixel_values)
    assert np.array_equal(
        fast.model_specific["image_grid_thw"], slow.model_specific["image_grid_thw"]
    )


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_1_5", "gemma3", "pixtral"])
def test_fallback_without_extension(
    family: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the extension the processors use Pillow/numpy, say so once, and agree."""
    cfg = json.loads((CONFIGS / family / "preprocessor_config.json").read_text())
    proc = create_processor(cfg)
    img = Image.fromarray(pixels(5, 123, 457, 3, 0))
    fast = proc.preprocess([img]).pixel_values
    monkeypatch.setattr(base, "_resample", None)
    monkeypatch.setattr(base, "_warned_slow", False)
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        slow = proc.preprocess([img]).pixel_values
        proc.preprocess([img])
    warnings = [r for r in caplog.records if "_resample is not built" in r.getMessage()]
    assert len(warnings) == 1
    assert np.array_equal(fast, slow)


def test_threads_release_the_gil_and_agree() -> None:
    arr = pixels(9, 400, 300, 3, 0)
    want = pillow(arr, 123, 456, 3)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ours(arr, 123, 456, 3, False), range(8)))
    assert all(np.array_equal(r, want) for r in results)


def test_rejects_bad_arguments() -> None:
    arr = pixels(1, 10, 10, 3, 0)
    with pytest.raises(ValueError, match="filter"):
        _resample.resample(arr, np.empty((5, 5, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="channels"):
        _resample.resample(arr, np.empty((5, 5), np.uint8), 3)
    with pytest.raises(TypeError):
        _resample.resample(arr.astype(np.float32), np.empty((5, 5, 3), np.uint8), 3)
    with pytest.raises((BufferError, ValueError)):
        _resample.resample(arr[:, ::2], np.empty((5, 5, 3), np.uint8), 3)
    assert apply_lut_chw(arr, normalize_lut(None, None, None)).shape == (3, 10, 10)
