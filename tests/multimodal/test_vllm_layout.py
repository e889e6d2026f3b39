"""Processed images in vllm_engine.proto: the servicer splits them per image as vLLM's model code
declares (`_get_mm_fields_config`: batched, flat_from_sizes, shared). Split here the same way,
each image's tensors must equal that image processed on its own."""

from __future__ import annotations

import numpy as np
import pytest
from tests.multimodal.test_families import config, image

from herdsman.engines.vllm import MediaLayoutError, _mm_inputs
from herdsman.multimodal import create_processor
from herdsman.pipeline.images import ImageInputs

IMAGES = ("wide.png", "tall.png", "square.png")
# Llama 3.2 Vision (mllama) is not served by vLLM's V1 engine; Pixtral is checked apart.
FAMILIES = ("gemma3", "gemma3_pan_and_scan", "llama4", "llava_1_5", "llava_next", "qwen2_5_vl")


def decode(tensor) -> np.ndarray:
    return np.frombuffer(tensor.inline, dtype=np.dtype(tensor.dtype).newbyteorder("<")).reshape(
        tuple(tensor.shape)
    )


def split_like_the_servicer(inputs, count: int) -> list[dict[str, np.ndarray]]:
    """Per image, every tensor as vLLM's MultiModalKwargsItems would hand it to the model."""
    tensors = {"pixel_values": decode(inputs.pixel_values)}
    tensors.update({k: decode(v) for k, v in inputs.model_specific_tensors.items()})
    items: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for key, array in tensors.items():
        if key in inputs.batched_keys:
            assert array.shape[0] == count, key
            for i in range(count):
                items[i][key] = array[i]
        elif key in inputs.flat_keys:
            sizes = tensors[inputs.flat_keys[key]].reshape(-1).tolist()
            assert len(sizes) == count and sum(sizes) == array.shape[0], key
            bounds = np.cumsum([0, *sizes])
            for i in range(count):
                items[i][key] = array[bounds[i] : bounds[i + 1]]
        else:
            pytest.fail(f"{key} would be shared by all images: vLLM's model splits it per image")
    return items


def engine_inputs(processed) -> ImageInputs:
    return ImageInputs(
        pixel_values=processed.pixel_values,
        model_specific=dict(processed.model_specific),
        image_token_id=7,
        placeholders=[(i * 10, n) for i, n in enumerate(processed.num_placeholders)],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_each_image_arrives_as_if_processed_alone(family: str) -> None:
    processor = create_processor(config(family))
    images = [image(name) for name in IMAGES]
    together = processor.preprocess(images)
    items = split_like_the_servicer(_mm_inputs(engine_inputs(together)), len(images))
    for item, img in zip(items, images, strict=True):
        alone = split_like_the_servicer(_mm_inputs(engine_inputs(processor.preprocess([img]))), 1)
        [expected] = alone
        assert item.keys() == expected.keys()
        for key, value in expected.items():
            got = item[key]
            if key == "pixel_values" and family == "llava_next":
                # Batches pad every image to the most patches; vLLM reads image_sizes for the rest.
                got = got[: value.shape[0]]
                assert not got[value.shape[0] :].any()
            np.testing.assert_array_equal(got, value, err_msg=f"{family} {key}")


def test_pixtral_one_image_is_sent_unpadded() -> None:
    processor = create_processor(config("pixtral"))
    processed = processor.preprocess([image("wide.png")])
    inputs = _mm_inputs(engine_inputs(processed))
    [item] = split_like_the_servicer(inputs, 1)
    h, w = processed.model_specific["image_sizes"][0]
    assert item["pixel_values"].shape == (3, h, w)
    np.testing.assert_array_equal(item["pixel_values"], processed.pixel_values[0, :, :h, :w])


def test_pixtral_images_of_different_sizes_are_refused() -> None:
    processor = create_processor(config("pixtral"))
    processed = processor.preprocess([image("wide.png"), image("tall.png")])
    with pytest.raises(MediaLayoutError) as err:
        _mm_inputs(engine_inputs(processed))
    assert err.value.code == "invalid_argument"  # a 400 for the client, not a 502
