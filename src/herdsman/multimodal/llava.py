"""LLaVA-1.5: CLIP preprocessing (shortest edge resize, center crop) to one fixed-size image.

Port of transformers 4.57 `CLIPImageProcessor`; the prompt side follows `LlavaProcessor`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, apply_lut_chw, resize_array


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """transformers' `get_resize_output_image_size(default_to_square=False)`: int() truncation."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """HWC uint8 center crop, zero-padding first when the image is smaller (as transformers)."""
    h, w = arr.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
        return arr[top : top + crop_h, left : left + crop_w]
    nh, nw = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((nh, nw, arr.shape[2]), dtype=arr.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded[tp : tp + h, lp : lp + w] = arr
    top, left = top + tp, left + lp
    return padded[max(0, top) : min(nh, top + crop_h), max(0, left) : min(nw, left + crop_w)]


class ClipProcessor(ImageProcessor):
    model_types = ("llava", "clip")
    processor_types = ("CLIPImageProcessor", "CLIPImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        size = config.get("size", {"shortest_edge": 224})
        self.do_resize = bool(config.get("do_resize", True))
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.size = size if isinstance(size, dict) else {"shortest_edge": int(size)}
        crop = config.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.crop = (int(crop["height"]), int(crop["width"]))
        # LlavaProcessor: tokens = (H/patch)*(W/patch) + CLS, minus CLS with the "default" strategy.
        self.vision_patch_size = int(config.get("vision_patch_size", 14))
        self.num_additional_image_tokens = int(config.get("num_additional_image_tokens", 1))
        self.vision_feature_select_strategy = config.get(
            "vision_feature_select_strategy", "default"
        )

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        if "shortest_edge" in self.size:
            return shortest_edge_size(height, width, int(self.size["shortest_edge"]))
        return int(self.size["height"]), int(self.size["width"])

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        if self.do_resize:
            arr = resize_array(img, *self.resize_target(img.height, img.width), self.resample)
        else:
            arr = np.asarray(img)
        if self.do_center_crop:
            arr = center_crop(arr, *self.crop)
        return arr

    def output_hw(self) -> tuple[int, int]:
        return self.crop if self.do_center_crop else self.resize_target(1, 1)

    def num_placeholders_for(self, height: int, width: int) -> int:
        h, w = self.output_hw()
        n = (h // self.vision_patch_size) * (w // self.vision_patch_size)
        n += self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            n -= 1
        return n

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        arrays = [apply_lut_chw(self.to_uint8(img), self.lut) for img in images]
        counts = [self.num_placeholders_for(img.height, img.width) for img in images]
        return ProcessedImages(np.stack(arrays), {}, counts)
