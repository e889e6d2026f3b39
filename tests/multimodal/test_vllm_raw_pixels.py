"""Raw pixels for a vLLM engine that normalizes on device (``mm_device_do_normalize``).

vLLM 0.32 normalizes Qwen2-VL / Qwen2.5-VL / Qwen3-VL (and Mistral 3, GLM-4.1V, ...) pixels in
the vision tower and takes the raw uint8 values; the gateway's processors write normalized
values. ``_raw_pixels`` maps them back through the processor's table, exactly; the end-to-end
check against vLLM's own server is tests/integration/test_vllm_images_differential.py.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from smg_grpc_proto import vllm_engine_pb2
from tests.multimodal.test_families import config, image

from herdsman.engines.base import EngineRequest, SamplingParams
from herdsman.engines.vllm import MediaLayoutError, VllmEngine, _mm_inputs, _raw_pixels
from herdsman.multimodal import create_processor
from herdsman.multimodal.base import resize_array
from herdsman.pipeline.images import ImageInputs

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava_1_5", "pixtral", "gemma3")


def inputs(processed, lut) -> ImageInputs:
    return ImageInputs(
        pixel_values=processed.pixel_values,
        model_specific=dict(processed.model_specific),
        image_token_id=7,
        placeholders=[(i * 10, n) for i, n in enumerate(processed.num_placeholders)],
        pixel_lut=lut,
    )


def by_channel(values: np.ndarray) -> np.ndarray:
    """(leading, 3, rest): Qwen rows are (channel, temporal, patch, patch), else (.., 3, h, w)."""
    if values.ndim == 2:
        return values.reshape(values.shape[0], 3, -1)
    return values.reshape(int(np.prod(values.shape[:-3])), 3, -1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["wide.png", "odd_333x217.jpg", "gray.png"])
def test_raw_values_map_back_to_the_normalized_ones(family: str, name: str) -> None:
    processor = create_processor(config(family))
    values = processor.preprocess([image(name)]).pixel_values
    raw = _raw_pixels(values, processor.lut)
    assert raw.dtype == np.uint8 and raw.shape == values.shape
    raw_channels, channels = by_channel(raw), by_channel(values)
    back = np.stack([processor.lut[c][raw_channels[:, c, :]] for c in range(3)], axis=1)
    np.testing.assert_array_equal(back, channels)


def test_qwen_raw_pixels_are_the_resized_image() -> None:
    """A patch's first temporal slot, channel 0, is the resized image's top-left 14x14 block."""
    processor = create_processor(config("qwen2_5_vl"))
    img = image("odd_333x217.jpg")
    processed = processor.preprocess([img])
    raw = _raw_pixels(processed.pixel_values, processor.lut)
    height, width = processor.target_size(img.height, img.width)
    resized = resize_array(img, height, width, processor.resample)
    first = raw[0].reshape(3, 2, 14, 14)
    np.testing.assert_array_equal(first[0, 0], resized[:14, :14, 0])
    np.testing.assert_array_equal(first[2, 1], resized[:14, :14, 2])


def test_values_outside_the_table_are_refused() -> None:
    processor = create_processor(config("qwen2_5_vl"))
    processed = processor.preprocess([image("wide.png")])
    padded = processed.pixel_values.copy()
    padded[0, 0] = 0.123  # not any uint8 value's normalized value
    with pytest.raises(MediaLayoutError):
        _raw_pixels(padded, processor.lut)
    with pytest.raises(MediaLayoutError):
        _mm_inputs(inputs(processed, None), raw_pixels=True)


def test_engine_asks_once_then_sends_raw_pixels() -> None:
    processor = create_processor(config("qwen2_5_vl"))
    processed = processor.preprocess([image("tall.png")])
    request = EngineRequest(
        request_id="r",
        input_ids=[7] * processed.num_placeholders[0],
        sampling=SamplingParams(),
        images=inputs(processed, processor.lut),
    )

    class Transport:
        """Records the Generate message; the engine answers nothing."""

        def __init__(self) -> None:
            self.sent: list = []

        def stream(self, method, message, response_type, timeout=None):
            self.sent.append(message)

            async def nothing():
                return
                yield

            return nothing()

    class Engine(VllmEngine):
        asked = 0

        async def server_info(self) -> dict[str, object]:
            self.asked += 1
            return {"mm_device_do_normalize": True}

    transport = Transport()
    engine = Engine("x", transport)  # type: ignore[arg-type]

    async def run() -> None:
        for _ in range(2):
            assert [output async for output in engine.generate(request)] == []

    asyncio.run(run())
    assert engine.asked == 1 and engine.device_normalizes is True
    assert len(transport.sent) == 2
    # What goes on the wire (the engine sends bytes: the prompt ids are packed apart).
    sent = vllm_engine_pb2.GenerateRequest.FromString(transport.sent[-1].SerializeToString())
    assert list(sent.tokenized.input_ids) == request.input_ids
    pixels = sent.mm_inputs.pixel_values
    assert pixels.dtype == "uint8" and list(pixels.shape) == list(processed.pixel_values.shape)
    expected = _raw_pixels(processed.pixel_values, processor.lut)
    assert np.frombuffer(pixels.inline, np.uint8).tolist() == expected.ravel().tolist()
