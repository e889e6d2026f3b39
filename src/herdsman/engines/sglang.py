"""Adapter for sglang.grpc.scheduler.SglangScheduler, SGLang's gRPC mode."""

from __future__ import annotations

import json
from typing import Any

from smg_grpc_proto.generated import sglang_scheduler_pb2

from herdsman.engines.base import EmbedRequest, EngineRequest
from herdsman.engines.embed_wire import EmbedResponseDecoder
from herdsman.engines.grpc_engine import GrpcEngine


def _tensor(array: Any) -> sglang_scheduler_pb2.TensorData:
    little = array.astype(array.dtype.newbyteorder("<"))
    return sglang_scheduler_pb2.TensorData(
        data=little.tobytes(), shape=list(array.shape), dtype=str(array.dtype)
    )


def _mm_inputs(images: Any) -> sglang_scheduler_pb2.MultimodalInputs:
    inputs = sglang_scheduler_pb2.MultimodalInputs(
        pixel_values=_tensor(images.pixel_values),
        im_token_id=images.image_token_id,
        mm_placeholders=[
            sglang_scheduler_pb2.PlaceholderRange(offset=o, length=n)
            for o, n in images.placeholders
        ],
        modalities=["image"],
    )
    for name, array in images.model_specific.items():
        inputs.model_specific_tensors[name].CopyFrom(_tensor(array))
    return inputs


class SglangScheduler(GrpcEngine):
    backend = "sglang"
    service = "sglang.grpc.scheduler.SglangScheduler"
    pb2 = sglang_scheduler_pb2
    # GenerateResponse.chunk, GenerateStreamChunk.index, and request_id beside them.
    chunk_fields = (2, 8, 1)
    # SGLang's Embed runs the model's own pooler: an embedding, or a classifier's scores.
    _embed_decoder = EmbedResponseDecoder(values_field=5, tokens_field=6)
    pooling_tasks = frozenset({"embed", "classify"})

    def _generate_request(
        self, request: EngineRequest, *, with_ids: bool = True
    ) -> sglang_scheduler_pb2.GenerateRequest:
        s = request.sampling
        # SGLang's scalar fields have no presence: absent means 0, so defaults are sent explicitly.
        params = sglang_scheduler_pb2.SamplingParams(
            temperature=1.0 if s.temperature is None else s.temperature,
            top_p=1.0 if s.top_p is None else s.top_p,
            top_k=-1 if s.top_k is None or s.top_k <= 0 else s.top_k,
            min_p=s.min_p or 0.0,
            frequency_penalty=s.frequency_penalty or 0.0,
            presence_penalty=s.presence_penalty or 0.0,
            repetition_penalty=1.0 if s.repetition_penalty is None else s.repetition_penalty,
            min_new_tokens=s.min_tokens,
            stop_token_ids=s.stop_token_ids,
            ignore_eos=s.ignore_eos,
            n=s.n,
            skip_special_tokens=False,
            # The gateway matches stop strings on the text; the engine must not trim.
            no_stop_trim=True,
        )
        if s.max_tokens is not None:
            params.max_new_tokens = s.max_tokens
        if s.constraint is not None:
            kind, value = s.constraint
            if kind == "json_object":  # SGLang has no flag for it; any JSON object is a schema
                params.json_schema = '{"type": "object"}'
            else:
                setattr(params, "ebnf_grammar" if kind == "grammar" else kind, value)
        if s.logit_bias:
            params.logit_bias.update({str(k): v for k, v in s.logit_bias.items()})
        if s.seed is not None:
            # SGLang's sampling params carry the seed as a custom parameter.
            params.custom_params.update({"sampling_seed": s.seed})
        message = sglang_scheduler_pb2.GenerateRequest(
            request_id=request.request_id,
            tokenized=sglang_scheduler_pb2.TokenizedInput(input_ids=request.input_ids)
            if with_ids
            else None,
            sampling_params=params,
            stream=request.stream,
        )
        if request.images is not None:
            message.mm_inputs.CopyFrom(_mm_inputs(request.images))
        if s.logprobs is not None or s.prompt_logprobs is not None:
            # One top-k setting serves prompt and output logprobs alike in SGLang.
            message.return_logprob = True
            message.top_logprobs_num = max(s.logprobs or 0, s.prompt_logprobs or 0)
            # 0: from the prompt's first token on; -1: generated tokens only.
            message.logprob_start_len = 0 if s.prompt_logprobs is not None else -1
        if request.data_parallel_rank is not None:
            message.data_parallel_rank = request.data_parallel_rank
        if request.bootstrap is not None:
            b = request.bootstrap
            message.disaggregated_params.CopyFrom(
                sglang_scheduler_pb2.DisaggregatedParams(
                    bootstrap_host=b.host, bootstrap_port=b.port, bootstrap_room=b.room
                )
            )
        return message

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        return [sglang_scheduler_pb2.AbortRequest(request_id=rid) for rid in request_ids]

    def _embed_request(self, request: EmbedRequest) -> sglang_scheduler_pb2.EmbedRequest:
        message = sglang_scheduler_pb2.EmbedRequest(
            request_id=request.request_id,
            tokenized=sglang_scheduler_pb2.TokenizedInput(input_ids=request.input_ids),
        )
        if request.token_type_ids is not None:
            message.token_type_ids.extend(request.token_type_ids)
        if request.data_parallel_rank is not None:
            message.data_parallel_rank = request.data_parallel_rank
        return message

    def _labels(self, info: Any) -> tuple[int, dict[str, str]]:
        labels: dict[str, str] = {}
        if info.id2label_json:
            try:
                parsed = json.loads(info.id2label_json)
            except ValueError:
                parsed = {}
            if isinstance(parsed, dict):
                labels = {str(k): str(v) for k, v in parsed.items()}
        return max(info.num_labels, len(labels)), labels
