"""Adapter for vllm.grpc.engine.VllmEngine, the service ``vllm serve --grpc`` exposes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2

from herdsman.engines.base import EngineError, EngineRequest
from herdsman.engines.grpc_engine import GrpcEngine


def _tensor(array: Any) -> vllm_engine_pb2.TensorData:
    little = array.astype(array.dtype.newbyteorder("<"))
    return vllm_engine_pb2.TensorData(
        shape=list(array.shape), dtype=str(array.dtype), inline=little.tobytes()
    )


class MediaLayoutError(EngineError):
    """Processed images that vllm_engine.proto cannot carry as this model's vLLM code wants
    (the client's request, so INVALID_ARGUMENT: a 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_argument")


@dataclass
class _Layout:
    """How vLLM's model splits each tensor per image (its `_get_mm_fields_config`).

    batched: dim 0 is the image; flat: images are consecutive runs of dim 0, of the sizes in
    another tensor; anything else is shared by all images (wrong for every per-image tensor).
    """

    pixel_values: Any
    tensors: dict[str, Any]
    batched: tuple[str, ...] = ()
    flat: dict[str, str] = field(default_factory=dict)
    keep_on_cpu: tuple[str, ...] = ()


def _vllm_layout(pixel_values: Any, tensors: dict[str, Any]) -> _Layout:
    if "image_grid_thw" in tensors:
        # Qwen2/2.5/3-VL: patch rows of all images in one run, split by patch count per image.
        grid = tensors["image_grid_thw"]
        tensors["patches_per_image"] = grid.prod(axis=-1).astype("int64")
        return _Layout(
            pixel_values,
            tensors,
            batched=("image_grid_thw", "patches_per_image"),
            flat={"pixel_values": "patches_per_image"},
            keep_on_cpu=("image_grid_thw",),
        )
    if "num_crops" in tensors:
        # Gemma 3: each image's crops follow its whole-image view; vLLM counts both.
        num_patches = tensors.pop("num_crops").astype("int64") + 1
        tensors["num_patches"] = num_patches
        return _Layout(
            pixel_values,
            tensors,
            batched=("num_patches",),
            flat={"pixel_values": "num_patches"},
            keep_on_cpu=("num_patches",),
        )
    if "aspect_ratios" in tensors:
        # Llama 4: an image's tiles, then a global tile when there is more than one tile.
        tiles = tensors["aspect_ratios"].prod(axis=-1).astype("int64")
        tensors["patches_per_image"] = np.where(tiles == 1, 1, tiles + 1).astype("int64")
        return _Layout(
            pixel_values,
            tensors,
            batched=("patches_per_image", "aspect_ratios"),
            flat={"pixel_values": "patches_per_image"},
            keep_on_cpu=("patches_per_image", "aspect_ratios"),
        )
    if "image_sizes" in tensors and pixel_values.ndim == 5:
        # LLaVA-NeXT: (images, patches, 3, h, w), with the original sizes beside them.
        return _Layout(
            pixel_values,
            tensors,
            batched=("pixel_values", "image_sizes"),
            keep_on_cpu=("image_sizes",),
        )
    if "image_sizes" in tensors:
        # Pixtral: vLLM wants each image at its own size (no padding), one tensor per image.
        sizes = {tuple(size) for size in tensors["image_sizes"].tolist()}
        if len(sizes) > 1:
            raise MediaLayoutError(
                "the vLLM gRPC protocol carries one pixel tensor per request; Pixtral images "
                "of different sizes cannot share it (send them in separate requests)"
            )
        (h, w) = sizes.pop()
        return _Layout(np.ascontiguousarray(pixel_values[:, :, :h, :w]), {}, ("pixel_values",))
    # LLaVA-1.5 and other fixed-size models: (images, 3, h, w).
    return _Layout(pixel_values, tensors, batched=("pixel_values",))


def _mm_inputs(images: Any) -> vllm_engine_pb2.MultimodalInputs:
    """Processed images in vllm_engine.proto's fields, laid out as the model's vLLM code splits
    them per image (the servicer takes the layout from batched_keys / flat_keys)."""
    layout = _vllm_layout(images.pixel_values, dict(images.model_specific))
    inputs = vllm_engine_pb2.MultimodalInputs(
        pixel_values=_tensor(layout.pixel_values),
        im_token_id=images.image_token_id,
        mm_placeholders=[
            vllm_engine_pb2.PlaceholderRange(offset=o, length=n) for o, n in images.placeholders
        ],
        mm_hashes=images.hashes,
        modality=common_pb2.IMAGE,
    )
    inputs.batched_keys.extend(layout.batched)
    inputs.flat_keys.update(layout.flat)
    inputs.keep_on_cpu_keys.extend(layout.keep_on_cpu)
    for name, array in layout.tensors.items():
        inputs.model_specific_tensors[name].CopyFrom(_tensor(array))
    return inputs


class VllmEngine(GrpcEngine):
    backend = "vllm"
    service = "vllm.grpc.engine.VllmEngine"
    pb2 = vllm_engine_pb2

    def _generate_request(self, request: EngineRequest) -> vllm_engine_pb2.GenerateRequest:
        s = request.sampling
        params = vllm_engine_pb2.SamplingParams(
            top_p=1.0 if s.top_p is None else s.top_p,
            top_k=0 if s.top_k is None or s.top_k < 0 else s.top_k,
            min_p=s.min_p or 0.0,
            frequency_penalty=s.frequency_penalty or 0.0,
            presence_penalty=s.presence_penalty or 0.0,
            repetition_penalty=1.0 if s.repetition_penalty is None else s.repetition_penalty,
            min_tokens=s.min_tokens,
            stop_token_ids=s.stop_token_ids,
            ignore_eos=s.ignore_eos,
            n=s.n,
            # The gateway detokenizes; the engine never sees text, so it keeps special ids.
            skip_special_tokens=False,
        )
        if s.temperature is not None:
            params.temperature = s.temperature
        if s.max_tokens is not None:
            params.max_tokens = s.max_tokens
        if s.seed is not None:
            params.seed = s.seed
        if s.logprobs is not None:
            params.logprobs = s.logprobs
        if s.prompt_logprobs is not None:
            params.prompt_logprobs = s.prompt_logprobs
        if s.logit_bias:
            params.logit_bias.update(s.logit_bias)
        if s.constraint is not None:
            kind, value = s.constraint
            if kind == "json_object":
                params.json_object = True
            else:
                setattr(params, kind, value)  # json_schema, regex, grammar, structural_tag
        message = vllm_engine_pb2.GenerateRequest(
            request_id=request.request_id,
            tokenized=vllm_engine_pb2.TokenizedInput(input_ids=request.input_ids),
            sampling_params=params,
            stream=request.stream,
        )
        if request.images is not None:
            message.mm_inputs.CopyFrom(_mm_inputs(request.images))
        if request.data_parallel_rank is not None:
            message.data_parallel_rank = request.data_parallel_rank
        return message

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        return [vllm_engine_pb2.AbortRequest(request_ids=request_ids)]
