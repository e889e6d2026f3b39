"""Request parsing for sglang.grpc.scheduler.SglangScheduler."""

from __future__ import annotations

from smg_grpc_proto.generated import sglang_scheduler_pb2
from tokenizers import Tokenizer

from herdsman.sim.model_card import ModelCard
from herdsman.sim.sim_request import GenerationParams
from herdsman.sim.wire import ProtoWire


class SglangWire(ProtoWire):
    backend = "sglang"
    server_type = "sglang-grpc"
    response_has_request_id = True
    eos_is_matched_token = True

    def __init__(self, card: ModelCard, tokenizer: Tokenizer) -> None:
        super().__init__(sglang_scheduler_pb2, card, tokenizer)

    def parse_generate(self, request: sglang_scheduler_pb2.GenerateRequest) -> GenerationParams:
        sp = request.sampling_params
        seed: int | None = None
        if sp.HasField("custom_params"):
            # SGLang takes a per-request seed as sampling_seed; the proto has no field of its own.
            value = sp.custom_params.fields.get("sampling_seed")
            if value is not None and value.WhichOneof("kind") == "number_value":
                seed = int(value.number_value)
        return GenerationParams(
            request_id=request.request_id,
            prompt_ids=list(request.tokenized.input_ids),
            max_tokens=sp.max_new_tokens if sp.HasField("max_new_tokens") else None,
            min_tokens=sp.min_new_tokens,
            stop_token_ids=frozenset(sp.stop_token_ids),
            ignore_eos=sp.ignore_eos,
            n=sp.n or 1,
            stream=request.stream,
            logprobs=max(request.top_logprobs_num, 0) if request.return_logprob else None,
            seed=seed,
            # logprob_start_len 0 asks for the whole prompt's logprobs (-1: none).
            prompt_logprobs=(
                max(request.top_logprobs_num, 0)
                if request.return_logprob and request.logprob_start_len == 0
                else None
            ),
            data_parallel_rank=(
                request.data_parallel_rank if request.HasField("data_parallel_rank") else None
            ),
        )
