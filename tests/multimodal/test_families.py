"""Registry, prompt-side token sequences, and batching of separately processed (cached) images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from herdsman.multimodal import create_processor, decode_image, expand_placeholders
from herdsman.multimodal.registry import load_processor, processor_class

HERE = Path(__file__).parent
FAMILIES = sorted(p.name for p in (HERE / "configs").iterdir())


def config(family: str) -> dict:
    return json.loads((HERE / "configs" / family / "preprocessor_config.json").read_text())


def image(name: str):
    return decode_image((HERE / "images" / name).read_bytes())


def test_registry() -> None:
    assert processor_class(model_type="llava_next").__name__ == "LlavaNextProcessor"
    assert processor_class(image_processor_type="CLIPImageProcessor").__name__ == "ClipProcessor"
    # model_type wins over the processor type a config names.
    cls = processor_class(image_processor_type="CLIPImageProcessor", model_type="llava_next")
    assert cls.__name__ == "LlavaNextProcessor"
    with pytest.raises(KeyError):
        processor_class(model_type="nope")
    p = load_processor(HERE / "configs" / "qwen2_5_vl")
    assert type(p).__name__ == "Qwen2VLProcessor" and p.patch_size == 14


def test_model_config_values_merged() -> None:
    p = create_processor(
        config("llava_1_5"),
        {"model_type": "llava", "vision_feature_select_strategy": "full",
         "vision_config": {"patch_size": 14}},
    )  # fmt: skip
    assert p.num_placeholders_for(10, 10) == 577


@pytest.mark.parametrize("family", FAMILIES)
def test_combine_equals_batch(family: str) -> None:
    """What the cache path does (process images one by one, then combine) must equal processing
    them together, including the families that pad to the batch's largest image."""
    p = create_processor(config(family))
    imgs = [image("wide.png"), image("tall.png"), image("square.png")]
    together = p.preprocess(imgs)
    apart = p.combine([p.preprocess([i]) for i in imgs])
    assert together.pixel_values.shape == apart.pixel_values.shape
    np.testing.assert_array_equal(together.pixel_values, apart.pixel_values)
    assert together.model_specific.keys() == apart.model_specific.keys()
    for k in together.model_specific:
        np.testing.assert_array_equal(together.model_specific[k], apart.model_specific[k])
    assert together.num_placeholders == apart.num_placeholders


def test_pixtral_sequence() -> None:
    p = create_processor(
        {**config("pixtral"), "image_token_id": 10, "image_break_token_id": 12,
         "image_end_token_id": 13}
    )  # fmt: skip
    out = p.preprocess([image("tall.png")])  # 136x48 -> 144x48 -> 9 rows of 3
    seq = out.placeholder_tokens[0] if out.placeholder_tokens else []
    assert seq == [*([10, 10, 10, 12] * 9)[:-1], 13]
    assert out.num_placeholders == [len(seq)] == [36]
    ids, ranges = expand_placeholders([1, 10, 2], 10, out.placeholder_tokens or [])
    assert ranges == [(1, 36)] and ids[1:37] == seq


def test_gemma3_sequence() -> None:
    ids = {"image_token_id": 262144, "boi_token_id": 255999, "eoi_token_id": 256000,
           "double_newline_token_id": 108}  # fmt: skip
    p = create_processor({**config("gemma3"), **ids})
    out = p.preprocess([image("square.png")])
    seq = (out.placeholder_tokens or [[]])[0]
    assert seq == [108, 255999, *[262144] * 256, 256000, 108]
    assert out.num_placeholders == [256]
    pas = create_processor({**config("gemma3_pan_and_scan"), **ids})
    out = pas.preprocess([image("pan_600x280.jpg")])
    assert out.model_specific["num_crops"].tolist() == [2]
    assert out.num_placeholders == [768] and out.placeholder_tokens is None


def test_mllama_no_expansion() -> None:
    p = create_processor(config("mllama"))
    out = p.preprocess([image("wide.png"), image("tall.png")])
    assert out.pixel_values.shape == (1, 2, 4, 3, 560, 560)
    assert out.num_placeholders == [1, 1]
