"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: smart resize to a multiple of patch*merge, then flattened
patches (temporal patch repeated for a still image) and `image_grid_thw`.

Port of transformers 4.57 `Qwen2VLImageProcessor` (Qwen3-VL's processor is the same algorithm
with patch 16 and mean/std 0.5)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, extension, resize_array
from .errors import MediaError


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise MediaError(
            f"image aspect ratio must be smaller than 200, got {ratio}",
            code="image_aspect_ratio",
        )
    # Python's round() (banker's rounding) on purpose: it is what transformers uses.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen2VLProcessor(ImageProcessor):
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
    processor_types = ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        size = config.get("size") or {}
        self.min_pixels = int(config.get("min_pixels") or size.get("shortest_edge", 56 * 56))
        self.max_pixels = int(config.get("max_pixels") or size.get("longest_edge", 28 * 28 * 1280))
        self.patch_size = int(config.get("patch_size", 14))
        self.temporal_patch_size = int(config.get("temporal_patch_size", 2))
        self.merge_size = int(config.get("merge_size", 2))

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(
            height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels
        )

    def num_placeholders_for(self, height: int, width: int) -> int:
        rh, rw = self.target_size(height, width)
        return (rh // self.patch_size) * (rw // self.patch_size) // (self.merge_size**2)

    def _one(self, img: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        rh, rw = self.target_size(img.height, img.width)
        arr = resize_array(img, rh, rw, self.resample)
        gh, gw = rh // p, rw // p
        ext = extension()
        if ext is not None and arr.ndim == 3 and arr.shape[2] == 3:
            # The same gather and table lookup in one C pass, written straight to the output.
            flat = np.empty((gh * gw, 3 * t * p * p), dtype=np.float32)
            ext.qwen_patches(np.ascontiguousarray(arr), self.lut, flat, p, m, t)
            return flat, (1, gh, gw)
        # (merged row, merged col, m, m, channel, p, p): patch order as a view, no copy yet.
        view = arr.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        out = np.empty((gh * gw, 3, t, p * p), dtype=np.float32)
        per_row = gw * m  # patches in one row of merged patches
        # One merged row at a time keeps the uint8 copy and the gather's index buffer in cache;
        # whole-image passes are memory-bound and about twice as slow on large images.
        for i in range(gh // m):
            rows = np.ascontiguousarray(view[i]).reshape(per_row, 3, p * p)
            dst = out[i * per_row : (i + 1) * per_row]
            for c in range(3):
                values = np.take(self.lut[c], rows[:, c, :])
                # A still image is its own temporal neighbour: each temporal slot, same pixels.
                for k in range(t):
                    dst[:, c, k, :] = values
        return out.reshape(gh * gw, 3 * t * p * p), (1, gh, gw)

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        flat, grids = [], []
        for img in images:
            patches, grid = self._one(img)
            flat.append(patches)
            grids.append(grid)
        pixel_values = flat[0] if len(flat) == 1 else np.concatenate(flat, axis=0)
        grid_thw = np.asarray(grids, dtype=np.int64).reshape(-1, 3)
        counts = [int(t * h * w) // (self.merge_size**2) for t, h, w in grids]
        return ProcessedImages(pixel_values, {"image_grid_thw": grid_thw}, counts)
