"""Pixtral (and Mistral Small 3.1's vision): fit inside longest_edge, round each side up to whole
patches, no cropping; the prompt gets a row of [IMG] tokens per patch row, each row closed by
[IMG_BREAK] and the last by [IMG_END].

Port of transformers 4.57 `PixtralImageProcessor` and `PixtralProcessor`'s prompt expansion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, apply_lut_chw, resize_array


def pixtral_resize_target(
    height: int, width: int, longest: tuple[int, int], patch: tuple[int, int]
) -> tuple[int, int]:
    ratio = max(height / longest[0], width / longest[1])
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return ((height - 1) // patch[0] + 1) * patch[0], ((width - 1) // patch[1] + 1) * patch[1]


class PixtralProcessor(ImageProcessor):
    model_types = ("pixtral", "llava_pixtral", "mistral3")
    processor_types = ("PixtralImageProcessor", "PixtralImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        size = config.get("size", {"longest_edge": 1024})
        if "longest_edge" in size:
            self.max_hw = (int(size["longest_edge"]), int(size["longest_edge"]))
        else:
            self.max_hw = (int(size["height"]), int(size["width"]))
        patch = config.get("patch_size", {"height": 16, "width": 16})
        if isinstance(patch, int):
            patch = {"height": patch, "width": patch}
        self.patch = (int(patch["height"]), int(patch["width"]))
        self.do_resize = bool(config.get("do_resize", True))
        # The prompt counts tokens per merged patch (Mistral Small 3.1 merges 2x2).
        self.spatial_merge_size = int(config.get("spatial_merge_size", 1))
        self.image_token_id = config.get("image_token_id")
        self.image_break_token_id = config.get("image_break_token_id")
        self.image_end_token_id = config.get("image_end_token_id")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.do_resize:
            return height, width
        return pixtral_resize_target(height, width, self.max_hw, self.patch)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.output_size(height, width)
        step = self.patch[0] * self.spatial_merge_size
        return h // step, w // step

    def num_placeholders_for(self, height: int, width: int) -> int:
        rows, cols = self.token_grid(height, width)
        return rows * (cols + 1)

    def placeholder_sequence(self, height: int, width: int) -> list[int] | None:
        ids = (self.image_token_id, self.image_break_token_id, self.image_end_token_id)
        if any(i is None for i in ids):
            return None
        img, brk, end = (int(i) for i in ids)  # type: ignore[arg-type]
        rows, cols = self.token_grid(height, width)
        seq = ([img] * cols + [brk]) * rows
        seq[-1] = end
        return seq

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        arrays = []
        for img in images:
            h, w = self.output_size(img.height, img.width)
            arrays.append(apply_lut_chw(resize_array(img, h, w, self.resample), self.lut))
        sizes = np.asarray([a.shape[1:] for a in arrays], dtype=np.int64)
        counts = [self.num_placeholders_for(img.height, img.width) for img in images]
        seqs = [self.placeholder_sequence(img.height, img.width) for img in images]
        tokens = None if any(s is None for s in seqs) else [s for s in seqs if s is not None]
        return ProcessedImages(self._pad(arrays), {"image_sizes": sizes}, counts, tokens)

    @staticmethod
    def _pad(arrays: Sequence[np.ndarray]) -> np.ndarray:
        # transformers zero-pads (after normalisation) to the batch's largest height and width.
        mh = max(a.shape[1] for a in arrays)
        mw = max(a.shape[2] for a in arrays)
        out = np.zeros((len(arrays), 3, mh, mw), dtype=np.float32)
        for i, a in enumerate(arrays):
            out[i, :, : a.shape[1], : a.shape[2]] = a
        return out

    def combine(self, results: Sequence[ProcessedImages]) -> ProcessedImages:
        if len(results) == 1:
            return results[0]
        arrays = [
            r.pixel_values[i, :, :h, :w]
            for r in results
            for i, (h, w) in enumerate(r.model_specific["image_sizes"].tolist())
        ]
        sizes = np.concatenate([r.model_specific["image_sizes"] for r in results])
        counts = [c for r in results for c in r.num_placeholders]
        tokens = None
        if all(r.placeholder_tokens is not None for r in results):
            tokens = [t for r in results for t in (r.placeholder_tokens or [])]
        return ProcessedImages(self._pad(arrays), {"image_sizes": sizes}, counts, tokens)
