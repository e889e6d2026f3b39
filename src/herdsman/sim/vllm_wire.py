"""Request parsing for vllm.grpc.engine.VllmEngine."""

from __future__ import annotations

from smg_grpc_proto.generated import vllm_engine_pb2
from tokenizers import Tokenizer

from herdsman.sim.logprobs import MAX_TOP_LOGPROBS
from herdsman.sim.model_card import ModelCard
from herdsman.sim.sim_request import GenerationParams
from herdsman.sim.wire import ProtoWire


class VllmWire(ProtoWire):
    backend = "vllm"
    server_type = "vllm-grpc"

    def __init__(self, card: ModelCard, tokenizer: Tokenizer) -> None:
        super().__init__(vllm_engine_pb2, card, tokenizer)

    def parse_generate(self, request: vllm_engine_pb2.GenerateRequest) -> GenerationParams:
        source = request.WhichOneof("input")
        if source == "tokenized":
            prompt_ids = list(request.tokenized.input_ids)
        elif source == "text":
            # vLLM tokenizes text prompts itself; the sim can, since it holds the tokenizer.
            prompt_ids = self.tokenizer.encode(request.text, add_special_tokens=True).ids
        else:
            raise ValueError("GenerateRequest carries neither tokenized input nor text")
        sp = request.sampling_params
        logprobs: int | None = None
        if sp.HasField("logprobs"):
            logprobs = MAX_TOP_LOGPROBS if sp.logprobs < 0 else sp.logprobs
        return GenerationParams(
            request_id=request.request_id,
            prompt_ids=prompt_ids,
            max_tokens=sp.max_tokens if sp.HasField("max_tokens") else None,
            min_tokens=sp.min_tokens,
            stop_token_ids=frozenset(sp.stop_token_ids),
            ignore_eos=sp.ignore_eos,
            n=sp.n or 1,
            stream=request.stream,
            logprobs=logprobs,
            seed=sp.seed if sp.HasField("seed") else None,
            prompt_logprobs=(
                (MAX_TOP_LOGPROBS if sp.prompt_logprobs < 0 else sp.prompt_logprobs)
                if sp.HasField("prompt_logprobs")
                else None
            ),
            data_parallel_rank=(
                request.data_parallel_rank if request.HasField("data_parallel_rank") else None
            ),
        )
