"""Adapter for vllm.grpc.engine.VllmEngine, the service ``vllm serve --grpc`` exposes."""

from __future__ import annotations

from typing import Any

from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2

from herdsman.engines.base import EngineRequest
from herdsman.engines.grpc_engine import GrpcEngine


def _tensor(array: Any) -> vllm_engine_pb2.TensorData:
    little = array.astype(array.dtype.newbyteorder("<"))
    return vllm_engine_pb2.TensorData(
        shape=list(array.shape), dtype=str(array.dtype), inline=little.tobytes()
    )


def _mm_inputs(images: Any) -> vllm_engine_pb2.MultimodalInputs:
    """Processed images in vllm_engine.proto's fields, laid out as the servicer batches them."""
    tensors = dict(images.model_specific)
    inputs = vllm_engine_pb2.MultimodalInputs(
        pixel_values=_tensor(images.pixel_values),
        im_token_id=images.image_token_id,
        mm_placeholders=[
            vllm_engine_pb2.PlaceholderRange(offset=o, length=n) for o, n in images.placeholders
        ],
        mm_hashes=images.hashes,
        modality=common_pb2.IMAGE,
    )
    grid = tensors.get("image_grid_thw")
    if grid is not None:
        # Qwen-VL: pixel rows of all images are flat; the servicer splits them per image by
        # patch count, and keeps the grid on the CPU (SMG lays them out the same way).
        tensors["patches_per_image"] = grid.prod(axis=-1).astype("int64")
        inputs.batched_keys.extend(["image_grid_thw", "patches_per_image"])
        inputs.flat_keys["pixel_values"] = "patches_per_image"
        inputs.keep_on_cpu_keys.append("image_grid_thw")
    for name, array in tensors.items():
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
        return message

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        return [vllm_engine_pb2.AbortRequest(request_ids=request_ids)]
