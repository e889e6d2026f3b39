"""Llama 3.2 Vision (Mllama): the image is fitted onto the best canvas of up to `max_image_tiles`
560x560 tiles (bilinear, aspect kept, zero padding right and bottom) and split into tiles; the
prompt's <|image|> token is not expanded (the model attends to the image through cross-attention).

Port of transformers 4.57 `MllamaImageProcessor` (`get_optimal_tiled_canvas` keeps its numpy
float arithmetic so ties resolve identically)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, apply_lut_chw, resize_array


def supported_aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    return [
        (w, h)
        for w in range(1, max_tiles + 1)
        for h in range(1, max_tiles + 1)
        if w * h <= max_tiles
    ]


@lru_cache(maxsize=1024)
def optimal_tiled_canvas(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """Smallest upscale that fits a canvas, else the largest downscale; ties -> smallest area."""
    canvases = np.array(supported_aspect_ratios(max_tiles)) * tile
    target_h, target_w = canvases.T
    scale_h, scale_w = target_h / height, target_w / width
    scales = np.where(scale_w > scale_h, scale_h, scale_w)
    up = scales[scales >= 1]
    selected = np.min(up) if len(up) > 0 else np.max(scales[scales < 1])
    chosen = canvases[scales == selected]
    best = chosen[np.argmin(chosen[:, 0] * chosen[:, 1])] if len(chosen) > 1 else chosen[0]
    return int(best[0]), int(best[1])


def fit_to_canvas(
    height: int, width: int, canvas_h: int, canvas_w: int, tile: int
) -> tuple[int, int]:
    target_w = int(np.clip(width, tile, canvas_w))
    target_h = int(np.clip(height, tile, canvas_h))
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


class MllamaProcessor(ImageProcessor):
    model_types = ("mllama",)
    processor_types = ("MllamaImageProcessor", "MllamaImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config.setdefault("resample", 2)
        super().__init__(config)
        size = config.get("size") or {"height": 224, "width": 224}
        if size["height"] != size["width"]:
            raise ValueError(f"Mllama tiles must be square, got {size}")
        self.tile = int(size["height"])
        self.max_tiles = int(config.get("max_image_tiles", 4))
        self.ratios = supported_aspect_ratios(self.max_tiles)

    def layout(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(tiles high, tiles wide, resized height, resized width)."""
        ch, cw = optimal_tiled_canvas(height, width, self.max_tiles, self.tile)
        nh, nw = fit_to_canvas(height, width, ch, cw, self.tile)
        return ch // self.tile, cw // self.tile, nh, nw

    def num_placeholders_for(self, height: int, width: int) -> int:
        return 1

    def _tiles(self, img: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        th, tw, nh, nw = self.layout(img.height, img.width)
        t = self.tile
        canvas = np.zeros((th * t, tw * t, 3), dtype=np.uint8)
        canvas[:nh, :nw] = resize_array(img, nh, nw, self.resample)
        chw = apply_lut_chw(canvas, self.lut)
        tiles = chw.reshape(3, th, t, tw, t).transpose(1, 3, 0, 2, 4).reshape(th * tw, 3, t, t)
        return tiles, (th, tw)

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        t = self.tile
        n = len(images)
        # transformers' layout for one prompt: (batch=1, images, max_tiles, 3, tile, tile).
        pixel_values = np.zeros((1, n, self.max_tiles, 3, t, t), dtype=np.float32)
        ids = np.zeros((1, n), dtype=np.int64)
        mask = np.zeros((1, n, self.max_tiles), dtype=np.int64)
        num_tiles = np.zeros((1, n), dtype=np.int64)
        for j, img in enumerate(images):
            tiles, (th, tw) = self._tiles(img)
            pixel_values[0, j, : len(tiles)] = tiles
            ids[0, j] = self.ratios.index((th, tw)) + 1
            mask[0, j, 0] = 1
            mask[0, j, : th * tw] = 1
            num_tiles[0, j] = len(tiles)
        specific = {"aspect_ratio_ids": ids, "aspect_ratio_mask": mask, "num_tiles": num_tiles}
        return ProcessedImages(pixel_values, specific, [1] * n)

    def combine(self, results: Sequence[ProcessedImages]) -> ProcessedImages:
        if len(results) == 1:
            return results[0]
        pixel_values = np.concatenate([r.pixel_values for r in results], axis=1)
        specific = {
            k: np.concatenate([r.model_specific[k] for r in results], axis=1)
            for k in results[0].model_specific
        }
        return ProcessedImages(
            pixel_values, specific, [c for r in results for c in r.num_placeholders]
        )
