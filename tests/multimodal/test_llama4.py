"""Llama 4 against transformers 4.57.6's own Llama4ImageProcessorFast (torchvision) and
Llama4Processor, from goldens made by `scripts/multimodal_goldens.py --llama4`:
`goldens/llama4_decisions.json` holds, for synthetic images of the sizes below, transformers'
supported resolutions, the canvas (`get_best_fit`), the resized size
(`get_max_res_without_distortion` after the one-tile upscaling cap), the aspect ratio, the number
of tiles and the prompt expansion's length; `goldens/llama4/white_1400x60.npz` the tiles of a
white 1400x60 image (padding and global tile). The photographs' tensors are checked in
test_goldens.py.

Among the cases: 3000x4000, where the resize floor must be float32, as torch's (4000 x
float32(0.336) rounds to 1344.0, float64 gives 1343.99... and a 1343-wide image), and 337x337,
where 672x672 and 672x1008 tie and the smaller area wins.
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

GOLDENS = Path(__file__).parent / "goldens"
DECISIONS = json.loads((GOLDENS / "llama4_decisions.json").read_text())
CASES = [(tuple(int(x) for x in hw.split("x")), case) for hw, case in DECISIONS["cases"].items()]
IDS = list(DECISIONS["cases"])
# The shape test preprocesses: only the cases with few tiles.
SMALL = [(hw, case) for hw, case in CASES if case["num_tiles"] <= 6]


def proc() -> Llama4Processor:
    p = create_processor(CONFIG)
    assert isinstance(p, Llama4Processor)
    return p


def test_supported_resolutions() -> None:
    res = supported_resolutions(16, 336)
    assert [list(r) for r in res] == DECISIONS["supported_resolutions"]  # order decides ties
    assert len(res) == len(set(res)) == 50  # every (h, w) with h * w <= 16


@pytest.mark.parametrize(("hw", "case"), CASES, ids=IDS)
def test_tiling_decisions(hw: tuple[int, int], case: dict) -> None:
    p = proc()
    assert p.layout(*hw) == (tuple(case["canvas"]), tuple(case["resized"]))
    assert list(p.aspect_ratio(*hw)) == case["aspect_ratio"]
    assert p.num_tiles(*hw) == case["num_tiles"]
    assert p.num_placeholders_for(*hw) == case["num_placeholders"]


@pytest.mark.parametrize(("hw", "case"), SMALL, ids=[f"{h}x{w}" for (h, w), _ in SMALL])
def test_shapes(hw: tuple[int, int], case: dict) -> None:
    img = Image.new("RGB", (hw[1], hw[0]), (255, 255, 255))
    out = proc().preprocess([img])
    assert out.pixel_values.shape == (case["num_tiles"], 3, 336, 336)
    assert out.model_specific["aspect_ratios"].tolist() == [case["aspect_ratio"]]
    assert out.num_placeholders == [case["num_placeholders"]]


def test_padding_and_global_tile_values() -> None:
    with np.load(GOLDENS / "llama4" / "white_1400x60.npz") as z:
        want = z["pixel_values.values"][z["pixel_values.index"].astype(np.int64)]
        want = want.reshape(tuple(z["pixel_values.shape"]))
    out = proc().preprocess([Image.new("RGB", (60, 1400), (255, 255, 255))]).pixel_values
    assert out.shape == want.shape == (6, 3, 336, 336)
    np.testing.assert_array_equal(out, want)  # no resize: exact
    # White -> 1.0, the zero padding -> (0 - 0.5) / 0.5 = -1.0; tiles stacked top to bottom.
    canvas = out[:5].transpose(1, 0, 2, 3).reshape(3, 1680, 336)
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
