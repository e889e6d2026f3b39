"""Llama 4: no transformers reference without torchvision, so the tiling decisions and shapes are
checked against values worked out by hand from `image_processing_llama4_fast.py` (336 tiles, at
most 16, 144 tokens per tile = (336/14)^2 / 4 after pixel shuffle 0.5).

Worked cases (h x w -> canvas, resized size, tiles):
- 96x96: every canvas upscales; the smallest upscale is 336x336 (3.5x) -> one tile. Upscaling
  is capped at one tile: target (max(96,336), max(96,336)) = 336x336 -> resized 336x336.
  One tile, no global tile; tokens 1 + 1 + 144 + 1 = 147.
- 136x48 (tall): 336x336 (scale min(7, 2.47) = 2.47 is the smallest upscale); target
  (336, 336); scale_w = 7 > scale_h = 2.47 -> height 336, width floor(48 * 2.4705882) = 118.
- 1400x60: canvases >= 1400 high: 1680x336, 1680x672, 1680x1008 all scale 1.2 (height-bound);
  smallest area 1680x336 -> 5x1 tiles; target (min(1400,1680), min(336,336)) = 1400x336, scale_h
  = 1.0 < scale_w -> 1400x60 (no resize, only padding). 5 tiles + global; tokens
  147 + 5 * 144 + 5 row separators = 872.
- 337x337: nothing upscales at 336 width; 672x672 and 672x1008 tie at scale 1.994; smaller area
  672x672 -> 2x2 + global = 5 tiles; image kept at 337x337; tokens 147 + 4 * 144 + 2 x-seps +
  2 y-seps = 727.
- 1080x1920: nothing fits; the largest downscale is 1008x1680 (min(0.875, 0.933) = 0.875) -> 3x5
  tiles + global = 16; resized 945x1680 (floor(1080 * 0.875)); tokens
  147 + 15 * 144 + 3 * 4 + 3 = 2322.
- 3000x4000: 1008x1344, 1008x1680 and 1344x1344 tie at 0.336; smallest area 1008x1344 -> 3x4 + 1
  = 13 tiles. The resize floor must be float32, as torch's: 4000 x float32(0.336) rounds to
  1344.0 (float64 gives 1343.99... and a 1343-wide image) -> 1008x1344; tokens
  147 + 12 * 144 + 3 * 3 + 3 = 1887.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herdsman.multimodal import create_processor, expand_placeholders
from herdsman.multimodal.llama4 import Llama4Processor, supported_resolutions, to_bfloat16

CONFIG = json.loads(
    (Path(__file__).parent / "configs" / "llama4" / "preprocessor_config.json").read_text()
)

CASES = [
    # (h, w), canvas, resized, (tiles_h, tiles_w), tiles incl. global, placeholders
    ((96, 96), (336, 336), (336, 336), (1, 1), 1, 147),
    ((136, 48), (336, 336), (336, 118), (1, 1), 1, 147),
    ((1400, 60), (1680, 336), (1400, 60), (5, 1), 6, 872),
    ((60, 1400), (336, 1680), (60, 1400), (1, 5), 6, 872),
    ((337, 337), (672, 672), (337, 337), (2, 2), 5, 727),
    ((336, 672), (336, 672), (336, 672), (1, 2), 3, 437),
    ((1080, 1920), (1008, 1680), (945, 1680), (3, 5), 16, 2322),
    ((3000, 4000), (1008, 1344), (1008, 1344), (3, 4), 13, 1887),
]


def proc() -> Llama4Processor:
    p = create_processor(CONFIG)
    assert isinstance(p, Llama4Processor)
    return p


def test_supported_resolutions() -> None:
    res = supported_resolutions(16, 336)
    assert len(res) == len(set(res)) == 50  # every (h, w) with h * w <= 16
    assert all(h * w <= 16 * 336 * 336 for h, w in res)
    assert res[0] == (336, 5376)  # 1x16 first: transformers' dict order decides ties


@pytest.mark.parametrize(("hw", "canvas", "resized", "ratio", "tiles", "tokens"), CASES)
def test_tiling_decisions(
    hw: tuple[int, int],
    canvas: tuple[int, int],
    resized: tuple[int, int],
    ratio: tuple[int, int],
    tiles: int,
    tokens: int,
) -> None:
    p = proc()
    assert p.layout(*hw) == (canvas, resized)
    assert p.aspect_ratio(*hw) == ratio
    assert p.num_tiles(*hw) == tiles
    assert p.num_placeholders_for(*hw) == tokens


@pytest.mark.parametrize(("hw", "ratio", "tiles"), [(c[0], c[3], c[4]) for c in CASES[:7]])
def test_shapes(hw: tuple[int, int], ratio: tuple[int, int], tiles: int) -> None:
    img = Image.new("RGB", (hw[1], hw[0]), (255, 0, 128))
    out = proc().preprocess([img])
    assert out.pixel_values.shape == (tiles, 3, 336, 336)
    assert out.model_specific["aspect_ratios"].tolist() == [list(ratio)]


def test_padding_and_global_tile_values() -> None:
    img = Image.new("RGB", (60, 1400), (255, 255, 255))  # 5 tiles high, 60 of 336 columns used
    out = proc().preprocess([img]).pixel_values
    assert out.shape == (6, 3, 336, 336)
    # White -> 1.0, the zero padding -> (0 - 0.5) / 0.5 = -1.0 (bf16-exact).
    canvas = out[:5].transpose(1, 0, 2, 3).reshape(3, 1680, 336)  # tiles stacked top to bottom
    assert np.all(canvas[:, :1400, :60] == 1.0)
    assert np.all(canvas[:, 1400:, :] == -1.0) and np.all(canvas[:, :, 60:] == -1.0)
    assert np.all(out[-1] == 1.0)  # the global tile is the whole image squashed


def test_bf16_normalisation() -> None:
    lut = proc().lut
    assert np.array_equal(lut, to_bfloat16(lut))  # every value representable in bfloat16
    assert lut[0, 0] == -1.0 and lut[0, 255] == 1.0
    # 128/255 = 0.50196 rounds to bf16 0.50390625 before the subtraction, so 128 maps to
    # 0.0078125 (float32 arithmetic would give 0.0039216).
    assert lut[0, 128] == np.float32(0.0078125)


def test_prompt_sequence() -> None:
    ids = {
        "image_start_token_id": 1,
        "image_token_id": 2,
        "patch_token_id": 3,
        "tile_x_separator_token_id": 4,
        "tile_y_separator_token_id": 5,
        "image_end_token_id": 6,
    }
    p = create_processor({**CONFIG, **ids})
    seq = p.placeholder_sequence(337, 337)
    assert seq is not None and len(seq) == 727
    p144 = [3] * 144
    assert seq == [1, *p144, 4, *p144, 5, *p144, 4, *p144, 5, 2, *p144, 6]
    assert p.placeholder_sequence(96, 96) == [1, 2, *p144, 6]
    out = p.preprocess([Image.new("RGB", (337, 337))])
    new_ids, ranges = expand_placeholders([7, 2, 8], 2, out.placeholder_tokens or [])
    assert ranges == [(1, 727)] and new_ids[0] == 7 and new_ids[-1] == 8
