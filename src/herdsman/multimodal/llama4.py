"""Llama 4: the image is fitted (aspect kept, upscaling capped at one tile) onto the best canvas
of up to `max_patches` 336x336 tiles, zero-padded right and bottom, split into tiles; when there
is more than one tile a global tile (the whole image squashed to 336x336) follows them.

A port of transformers 4.57 `image_processing_llama4_fast.py` (torch and torchvision; its
goldens come from a separate venv, see tests/multimodal/PROVENANCE.md). Faithful in the tiling
decision, including its float32 arithmetic (torch divides int64 tensors into float32, and the
resize-size floor depends on it: 4000 x float32(1344/4000) is 1344.0, in float64 1343.99...),
and in the normalisation, which torch does in bfloat16; the only known difference is
resampling, which is Pillow's bilinear here and torchvision's antialiased bilinear there (a
Pillow port; uint8 results can differ by one level).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from .base import ImageProcessor, ProcessedImages, apply_lut_chw, resize_array


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def bf16_normalize_lut(
    rescale_factor: float, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """torch: `x.to(bfloat16) * rescale_factor`, then `(x - mean) / std` with bf16 mean/std; each
    op computes in float32 and rounds back to bfloat16."""
    v = to_bfloat16(np.arange(256, dtype=np.float32))
    r = to_bfloat16(v * np.float32(rescale_factor))
    m = to_bfloat16(np.asarray(mean, dtype=np.float32)).reshape(3, 1)
    s = to_bfloat16(np.asarray(std, dtype=np.float32)).reshape(3, 1)
    return np.ascontiguousarray(to_bfloat16(to_bfloat16(r[None, :] - m) / s))


def get_factors(n: int) -> set[int]:
    out = set()
    for i in range(1, int(n**0.5) + 1):
        if n % i == 0:
            out.update((i, n // i))
    return out


@lru_cache(maxsize=8)
def supported_resolutions(max_chunks: int, tile: int) -> tuple[tuple[int, int], ...]:
    """Canvas (height, width) list in transformers' order (grouped by aspect ratio, first seen
    first), which decides argmin ties."""
    by_ratio: dict[float, list[tuple[int, int]]] = defaultdict(list)
    for chunks in range(max_chunks, 0, -1):
        for f in sorted(get_factors(chunks)):
            h, w = f, chunks // f
            by_ratio[h / w].append((h, w))
    return tuple((h * tile, w * tile) for group in by_ratio.values() for h, w in group)


def best_fit(
    height: int, width: int, resolutions: Sequence[tuple[int, int]], to_max_canvas: bool = False
) -> tuple[int, int]:
    res = np.asarray(resolutions, dtype=np.int64)
    scale_w = res[:, 1].astype(np.float32) / np.float32(width)
    scale_h = res[:, 0].astype(np.float32) / np.float32(height)
    scales = np.where(scale_h > scale_w, scale_w, scale_h)
    up = scales[scales >= 1]
    if len(up) > 0:
        selected = np.max(up) if to_max_canvas else np.min(up)
    else:
        selected = np.max(scales[scales < 1])
    chosen = res[scales == selected]
    best = chosen[np.argmin(chosen[:, 0] * chosen[:, 1])] if len(chosen) > 1 else chosen[0]
    return int(best[0]), int(best[1])


def max_res_without_distortion(
    height: int, width: int, target_h: int, target_w: int
) -> tuple[int, int]:
    scale_w = np.float32(target_w) / np.float32(width)
    scale_h = np.float32(target_h) / np.float32(height)
    if scale_w < scale_h:
        return min(math.floor(np.float32(height) * scale_w), target_h), target_w
    return target_h, min(math.floor(np.float32(width) * scale_h), target_w)


class Llama4Processor(ImageProcessor):
    model_types = ("llama4",)
    processor_types = ("Llama4ImageProcessor", "Llama4ImageProcessorFast")

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config.setdefault("resample", 2)
        config["image_mean"] = config.get("image_mean") or [0.5, 0.5, 0.5]
        config["image_std"] = config.get("image_std") or [0.5, 0.5, 0.5]
        super().__init__(config)
        if self.do_rescale and self.do_normalize:
            self.lut = bf16_normalize_lut(self.rescale_factor, self.image_mean, self.image_std)
        size = config.get("size") or {"height": 336, "width": 336}
        if size["height"] != size["width"]:
            raise ValueError("Llama 4 tiles must be square")
        self.tile = int(size["height"])
        self.max_patches = int(config.get("max_patches", 16))
        self.resize_to_max_canvas = bool(config.get("resize_to_max_canvas", False))
        # Llama4Processor: patch 14, pixel shuffle 0.5 -> (336/14)^2 / 4 = 144 tokens per tile.
        self.vision_patch_size = int(config.get("vision_patch_size", 14))
        ratio = float(config.get("pixel_shuffle_ratio", 0.5))
        self.downsample_ratio = round(1.0 / ratio**2)
        self.tokens_per_tile = (self.tile // self.vision_patch_size) ** 2 // self.downsample_ratio
        self.token_ids = {
            k: config.get(k)
            for k in (
                "image_start_token_id", "image_token_id", "patch_token_id",
                "tile_x_separator_token_id", "tile_y_separator_token_id", "image_end_token_id",
            )
        }  # fmt: skip

    def layout(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((canvas height, canvas width), (resized height, resized width))."""
        canvas = best_fit(
            height,
            width,
            supported_resolutions(self.max_patches, self.tile),
            self.resize_to_max_canvas,
        )
        target = canvas
        if not self.resize_to_max_canvas:
            # Small images are not blown up past one tile's size, only padded.
            target = (
                min(max(height, self.tile), canvas[0]),
                min(max(width, self.tile), canvas[1]),
            )
        nh, nw = max_res_without_distortion(height, width, *target)
        return canvas, (max(nh, 1), max(nw, 1))

    def aspect_ratio(self, height: int, width: int) -> tuple[int, int]:
        (ch, cw), _ = self.layout(height, width)
        return ch // self.tile, cw // self.tile

    def num_tiles(self, height: int, width: int) -> int:
        rh, rw = self.aspect_ratio(height, width)
        return rh * rw + (1 if rh * rw > 1 else 0)

    def num_placeholders_for(self, height: int, width: int) -> int:
        """Length of the whole replacement of <|image|>: start, tiles with separators, the
        global <|image|> and its patches, end."""
        rh, rw = self.aspect_ratio(height, width)
        n = 2 + 1 + self.tokens_per_tile
        if rh * rw > 1:
            n += rh * rw * self.tokens_per_tile + rh * (rw - 1) + rh
        return n

    def placeholder_sequence(self, height: int, width: int) -> list[int] | None:
        t = self.token_ids
        if any(v is None for v in t.values()):
            return None
        patch = [int(t["patch_token_id"])] * self.tokens_per_tile  # type: ignore[arg-type]
        rh, rw = self.aspect_ratio(height, width)
        seq = [int(t["image_start_token_id"])]  # type: ignore[arg-type]
        if rh * rw > 1:
            for _ in range(rh):
                for x in range(rw):
                    seq += patch
                    if x < rw - 1:
                        seq.append(int(t["tile_x_separator_token_id"]))  # type: ignore[arg-type]
                seq.append(int(t["tile_y_separator_token_id"]))  # type: ignore[arg-type]
        seq += [int(t["image_token_id"]), *patch, int(t["image_end_token_id"])]  # type: ignore[arg-type]
        return seq

    def _tiles(self, img: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        (ch, cw), (nh, nw) = self.layout(img.height, img.width)
        t = self.tile
        canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
        canvas[:nh, :nw] = resize_array(img, nh, nw, self.resample)
        rh, rw = ch // t, cw // t
        chw = apply_lut_chw(canvas, self.lut)
        tiles = chw.reshape(3, rh, t, rw, t).transpose(1, 3, 0, 2, 4).reshape(rh * rw, 3, t, t)
        if rh * rw > 1:
            glob = apply_lut_chw(resize_array(img, t, t, self.resample), self.lut)
            tiles = np.concatenate([tiles, glob[None]], axis=0)
        return tiles, (rh, rw)

    def preprocess(self, images: Sequence[Image.Image]) -> ProcessedImages:
        all_tiles, ratios, counts, seqs = [], [], [], []
        for img in images:
            tiles, ratio = self._tiles(img)
            all_tiles.append(tiles)
            ratios.append(ratio)
            counts.append(self.num_placeholders_for(img.height, img.width))
            seqs.append(self.placeholder_sequence(img.height, img.width))
        tokens = None if any(s is None for s in seqs) else [s for s in seqs if s is not None]
        return ProcessedImages(
            np.concatenate(all_tiles, axis=0),
            {"aspect_ratios": np.asarray(ratios, dtype=np.int64)},
            counts,
            tokens,
        )
