"""Gemma 3: every image squashed to 896x896 (bilinear); optionally "pan and scan", which adds
up to N crops along the long side of an elongated image, each also squashed to 896x896. Each
image and crop is 256 soft tokens between <start_of_image> and <end_of_image>.

Port of transformers 4.57 `Gemma3ImageProcessor` and `Gemma3Processor`'s prompt expansion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, apply_lut_chw, resize_array

# Gemma3Processor's images_kwargs defaults: what applies when the config leaves them null.
PAN_AND_SCAN_DEFAULTS = {
    "do_pan_and_scan": False,
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}


def pan_and_scan_boxes(
    height: int, width: int, min_crop: int, max_crops: int, min_ratio: float
) -> list[tuple[int, int, int, int]]:
    """Crop boxes (left, top, right, bottom), clipped to the image; [] when not elongated enough."""
    if width >= height:
        if width / height < min_ratio:
            return []
        n_w = math.floor(width / height + 0.5)
        n_w = max(2, min(math.floor(width / min_crop), n_w))
        n_w, n_h = min(max_crops, n_w), 1
    else:
        if height / width < min_ratio:
            return []
        n_h = math.floor(height / width + 0.5)
        n_h = max(2, min(math.floor(height / min_crop), n_h))
        n_h, n_w = min(max_crops, n_h), 1
    cw, ch = math.ceil(width / n_w), math.ceil(height / n_h)
    if min(cw, ch) < min_crop:
        return []
    return [
        (x, y, min(x + cw, width), min(y + ch, height))
        for y in range(0, ch * n_h, ch)
        for x in range(0, cw * n_w, cw)
    ]


class Gemma3Processor(ImageProcessor):
    model_types = ("gemma3",)
    processor_types = ("Gemma3ImageProcessor", "Gemma3ImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config.setdefault("resample", 2)
        config["image_mean"] = config.get("image_mean") or [0.5, 0.5, 0.5]
        config["image_std"] = config.get("image_std") or [0.5, 0.5, 0.5]
        super().__init__(config)
        size = config.get("size") or {"height": 224, "width": 224}
        self.size = (int(size["height"]), int(size["width"]))
        self.do_resize = bool(config.get("do_resize", True))
        pas = {k: config.get(k) for k in PAN_AND_SCAN_DEFAULTS}
        pas = {k: (PAN_AND_SCAN_DEFAULTS[k] if v is None else v) for k, v in pas.items()}
        self.do_pan_and_scan = bool(pas["do_pan_and_scan"])
        self.min_crop = int(pas["pan_and_scan_min_crop_size"])
        self.max_crops = int(pas["pan_and_scan_max_num_crops"])
        self.min_ratio = float(pas["pan_and_scan_min_ratio_to_activate"])
        self.image_seq_length = int(config.get("image_seq_length", 256))
        self.image_token_id = config.get("image_token_id")  # <image_soft_token>, 262144
        self.boi_token_id = config.get("boi_token_id")  # <start_of_image>, 255999
        self.eoi_token_id = config.get("eoi_token_id")  # <end_of_image>, 256000
        self.double_newline_token_id = config.get("double_newline_token_id")  # "\n\n", 108

    def crops(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        if not self.do_pan_and_scan:
            return []
        return pan_and_scan_boxes(height, width, self.min_crop, self.max_crops, self.min_ratio)

    def num_placeholders_for(self, height: int, width: int) -> int:
        return self.image_seq_length * (1 + len(self.crops(height, width)))

    def image_sequence(self) -> list[int] | None:
        """The tokens replacing one <start_of_image> (one image or one crop): what the processor
        writes as "\\n\\n<boi>" + 256 x <image_soft_token> + "<eoi>\\n\\n"."""
        ids = (self.double_newline_token_id, self.boi_token_id, self.eoi_token_id)
        if self.image_token_id is None or any(i is None for i in ids):
            return None
        nl, boi, eoi = (int(i) for i in ids)  # type: ignore[arg-type]
        return [nl, boi, *[int(self.image_token_id)] * self.image_seq_length, eoi, nl]

    def _squash(self, img: Image.Image) -> np.ndarray:
        if self.do_resize:
            return apply_lut_chw(resize_array(img, *self.size, self.resample), self.lut)
        return apply_lut_chw(np.asarray(img), self.lut)

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        arrays, num_crops, counts = [], [], []
        for img in images:
            boxes = self.crops(img.height, img.width)
            arrays.append(self._squash(img))
            arrays.extend(self._squash(img.crop(box)) for box in boxes)
            num_crops.append(len(boxes))
            counts.append(self.image_seq_length * (1 + len(boxes)))
        seq = self.image_sequence()
        tokens = None
        if seq is not None and not any(num_crops):
            # With crops the replacement also holds tokenizer text ("Here is the original
            # image ..."), which only the tokenizer can produce.
            tokens = [list(seq) for _ in images]
        specific = {"num_crops": np.asarray(num_crops, dtype=np.int64)}
        return ProcessedImages(np.stack(arrays), specific, counts, tokens)
