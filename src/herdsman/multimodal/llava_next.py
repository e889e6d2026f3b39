"""LLaVA-NeXT (LLaVA-1.6): any-resolution. The image is fitted into the best of a list of grid
resolutions, padded, cut into crop-size tiles, and preceded by the whole image squashed to one
tile.

Port of transformers 4.57 `LlavaNextImageProcessor`; the prompt side follows
`LlavaNextProcessor._get_number_of_features`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import ProcessedImages, apply_lut_chw, resize_array
from .llava import ClipProcessor, center_crop


def select_best_resolution(
    original_size: tuple[int, int], possible: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The (height, width) that keeps the most of the image's pixels, then wastes the fewest."""
    oh, ow = original_size
    best = (0, 0)
    max_effective, min_wasted = 0, float("inf")
    for height, width in possible:
        scale = min(width / ow, height / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        effective = min(dw * dh, ow * oh)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted = effective, wasted
            best = (height, width)
    return best


def patch_output_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    th, tw = target
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


class LlavaNextProcessor(ClipProcessor):
    model_types = ("llava_next",)
    processor_types = ("LlavaNextImageProcessor", "LlavaNextImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.grid_pinpoints = [tuple(p) for p in config.get("image_grid_pinpoints", [])] or [
            (336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)
        ]  # fmt: skip
        self.do_pad = bool(config.get("do_pad", True))
        size = self.size
        edge = size["shortest_edge"] if "shortest_edge" in size else min(
            size["height"], size["width"]
        )  # fmt: skip
        self.base_size = int(edge)
        self.tile = self.crop[0]

    def _finish(self, arr: np.ndarray) -> np.ndarray:
        """The per-tile CLIP steps (both are identities for the published configs)."""
        if self.do_resize:
            h, w = arr.shape[:2]
            th, tw = self.resize_target(h, w)
            if (th, tw) != (h, w):
                arr = resize_array(Image.fromarray(arr), th, tw, self.resample)
        if self.do_center_crop:
            arr = center_crop(arr, *self.crop)
        return apply_lut_chw(arr, self.lut)

    def _tiles(self, img: Image.Image) -> np.ndarray:
        best = select_best_resolution((img.height, img.width), self.grid_pinpoints)
        nh, nw = patch_output_size(img.height, img.width, best)
        resized = resize_array(img, nh, nw, self.resample)
        # Centred on a zero canvas; an odd remainder goes after, as transformers' divmod padding.
        py, px = (best[0] - nh) // 2, (best[1] - nw) // 2
        padded = np.zeros((best[0], best[1], 3), dtype=np.uint8)
        padded[py : py + nh, px : px + nw] = resized
        t = self.tile
        base = resize_array(img, self.base_size, self.base_size, self.resample)
        tiles = [base] + [
            padded[i : i + t, j : j + t] for i in range(0, best[0], t) for j in range(0, best[1], t)
        ]
        return np.stack([self._finish(np.ascontiguousarray(x)) for x in tiles])

    def num_placeholders_for(self, height: int, width: int) -> int:
        tile_h, tile_w = self.output_hw()
        bh, bw = select_best_resolution((height, width), self.grid_pinpoints)
        scale_h, scale_w = bh // tile_h, bw // tile_w
        ph, pw = tile_h // self.vision_patch_size, tile_w // self.vision_patch_size
        cur_h, cur_w = ph * scale_h, pw * scale_w
        if width / height > cur_w / cur_h:
            new_h = int(round(height * (cur_w / width), 7))
            cur_h -= ((cur_h - new_h) // 2) * 2
        else:
            new_w = int(round(width * (cur_h / height), 7))
            cur_w -= ((cur_w - new_w) // 2) * 2
        n = cur_h * cur_w + cur_h + ph * pw + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            n -= 1
        return n

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        per_image = [self._tiles(img) for img in images]
        sizes = np.asarray([[img.height, img.width] for img in images], dtype=np.int64)
        counts = [self.num_placeholders_for(img.height, img.width) for img in images]
        return self.merge([ProcessedImages(p[None], {}, []) for p in per_image], sizes, counts)

    def merge(
        self, parts: Sequence[ProcessedImages], sizes: np.ndarray, counts: list[int]
    ) -> ProcessedImages:
        # transformers pads every image's tile stack with zero tiles to the batch's largest.
        most = max(p.pixel_values.shape[1] for p in parts)
        stacked = np.zeros((len(parts), most, *parts[0].pixel_values.shape[2:]), np.float32)
        for i, p in enumerate(parts):
            stacked[i, : p.pixel_values.shape[1]] = p.pixel_values[0]
        return ProcessedImages(stacked, {"image_sizes": sizes}, counts)

    def combine(self, results: Sequence[ProcessedImages]) -> ProcessedImages:
        sizes = np.concatenate([r.model_specific["image_sizes"] for r in results])
        parts = [
            ProcessedImages(r.pixel_values[i : i + 1], {}, [])
            for r in results
            for i in range(r.pixel_values.shape[0])
        ]
        return self.merge(parts, sizes, [c for r in results for c in r.num_placeholders])


__all__ = ["LlavaNextProcessor", "patch_output_size", "select_best_resolution"]
