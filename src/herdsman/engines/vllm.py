"""Adapter for vllm.grpc.engine.VllmEngine, the service ``vllm serve --grpc`` exposes."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2

from herdsman.engines.base import (
    EmbedRequest,
    EngineError,
    EngineOutput,
    EngineRequest,
    OutputSink,
)
from herdsman.engines.embed_wire import EmbedResponseDecoder
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
    # numpy is imported here, not at the top: the supervisor connects to engines through this
    # module and must stay small (the gateway processes have numpy loaded already).
    import numpy as np

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


def _raw_pixels(pixel_values: Any, lut: Any) -> Any:
    """Normalized pixels back to the uint8 values they were looked up from (exactly).

    vLLM normalizes on device for some models (``mm_device_do_normalize``, on by default for
    Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Mistral 3 and others in vLLM 0.32): it takes raw uint8
    pixels and applies ``x * rescale / std - mean / std`` in its vision tower, so normalized
    pixels would be normalized twice. Every value the processors write is ``lut[c][v]`` for the
    pixel's uint8 value v (base.normalize_lut), and each channel's table is strictly increasing,
    so a sorted search finds v. The channel is the axis of size 3 right after the image axes:
    rows of (channel, temporal, patch, patch) for the Qwen family, (channel, h, w) images else.
    """
    if lut is None:
        raise MediaLayoutError(
            "this vLLM engine normalizes pixels on device (mm_device_do_normalize) and the "
            "model's image processor has no uint8 table to send it raw pixels from"
        )
    import numpy as np  # here, not at the top: see _vllm_layout

    values = np.asarray(pixel_values)
    channels = lut.shape[0]
    leading = values.shape[0] if values.ndim == 2 else int(np.prod(values.shape[:-3]))
    if values.shape[1] % channels if values.ndim == 2 else values.shape[-3] != channels:
        raise MediaLayoutError(f"pixel tensor of shape {values.shape}: no channel axis")
    grouped = values.reshape(leading, channels, -1)
    raw = np.empty(grouped.shape, dtype=np.uint8)
    for c in range(grouped.shape[1]):
        table = lut[c]
        found = np.searchsorted(table, grouped[:, c, :]).clip(0, 255)
        if not np.array_equal(table[found], grouped[:, c, :]):
            raise MediaLayoutError(
                "pixel values that are not the image processor's table values (padding?) "
                "cannot be sent raw to an engine that normalizes on device"
            )
        raw[:, c, :] = found
    return raw.reshape(values.shape)


def _mm_inputs(images: Any, raw_pixels: bool = False) -> vllm_engine_pb2.MultimodalInputs:
    """Processed images in vllm_engine.proto's fields, laid out as the model's vLLM code splits
    them per image (the servicer takes the layout from batched_keys / flat_keys). With
    ``raw_pixels`` (the engine normalizes on device), the pixels go as their uint8 values."""
    layout = _vllm_layout(images.pixel_values, dict(images.model_specific))
    if raw_pixels:
        layout.pixel_values = _raw_pixels(layout.pixel_values, getattr(images, "pixel_lut", None))
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


def _set_kv_transfer_params(message: vllm_engine_pb2.GenerateRequest, params: str) -> None:
    """The JSON field, which servicers of 0.4.28 read; a handoff that names the prefill's
    address also in the legacy typed field, for servicers that only know that one."""
    message.kv_transfer_params_json = params
    try:
        fields = json.loads(params)
    except ValueError:
        return
    if isinstance(fields, dict) and fields.get("remote_host") and fields.get("remote_port"):
        message.kv_transfer_params.CopyFrom(
            vllm_engine_pb2.KvTransferParams(
                remote_host=str(fields["remote_host"]), remote_port=int(fields["remote_port"])
            )
        )


class VllmEngine(GrpcEngine):
    backend = "vllm"
    service = "vllm.grpc.engine.VllmEngine"
    pb2 = vllm_engine_pb2
    # GenerateResponse.chunk, GenerateStreamChunk.index, no other top-level field.
    chunk_fields = (1, 7, 0)
    # Its servicer's Embed runs vLLM's "embed" pooling task and nothing else: a classifier's head
    # cannot be reached through this protocol.
    _embed_decoder = EmbedResponseDecoder(values_field=1, tokens_field=2)
    pooling_tasks = frozenset({"embed"})
    # Whether the engine normalizes pixels on device (GetServerInfo's mm_device_do_normalize);
    # None until the first request with images asks.
    device_normalizes: bool | None = None

    def generate(
        self, request: EngineRequest, push: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        if request.images is not None and self.device_normalizes is None:
            return self._generate_after_asking(request, push)
        return super().generate(request, push)  # no extra generator on the hot path

    async def _generate_after_asking(
        self, request: EngineRequest, push: OutputSink | None
    ) -> AsyncGenerator[EngineOutput, None]:
        """The first request with images: learn the pixel format the engine takes, then go."""
        info = await self.server_info()  # an engine error here is this request's error
        self.device_normalizes = bool(info.get("mm_device_do_normalize", False))
        outputs = super().generate(request, push)
        try:
            async for output in outputs:
                yield output
        finally:
            await outputs.aclose()

    def _generate_request(
        self, request: EngineRequest, *, with_ids: bool = True
    ) -> vllm_engine_pb2.GenerateRequest:
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
            tokenized=vllm_engine_pb2.TokenizedInput(input_ids=request.input_ids)
            if with_ids
            else None,
            sampling_params=params,
            stream=request.stream,
        )
        if request.images is not None:
            message.mm_inputs.CopyFrom(
                _mm_inputs(request.images, raw_pixels=bool(self.device_normalizes))
            )
        if request.data_parallel_rank is not None:
            message.data_parallel_rank = request.data_parallel_rank
        if request.kv_transfer_params is not None:
            _set_kv_transfer_params(message, request.kv_transfer_params)
        return message

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        return [vllm_engine_pb2.AbortRequest(request_ids=request_ids)]

    def _embed_request(self, request: EmbedRequest) -> vllm_engine_pb2.EmbedRequest:
        if request.token_type_ids and any(request.token_type_ids):
            raise EngineError(
                "vllm_engine.proto cannot carry token type ids (a pair encoding)",
                code="invalid_argument",
            )
        return vllm_engine_pb2.EmbedRequest(
            request_id=request.request_id,
            tokenized=vllm_engine_pb2.TokenizedInput(input_ids=request.input_ids),
        )
