"""Request parsing for sglang.grpc.scheduler.SglangScheduler."""

from __future__ import annotations

import dataclasses

from smg_grpc_proto.generated import sglang_scheduler_pb2
from tokenizers import Tokenizer

from herdsman.sim.model_card import ModelCard
from herdsman.sim.options import Role
from herdsman.sim.sim_request import DecodeHandoff, EmbedParams, GenerationParams, PrefillHandoff
from herdsman.sim.wire import ProtoWire


class SglangWire(ProtoWire):
    backend = "sglang"
    server_type = "sglang-grpc"
    response_has_request_id = True
    eos_is_matched_token = True

    def __init__(
        self,
        card: ModelCard,
        tokenizer: Tokenizer,
        *,
        role: Role = "regular",
        data_parallel_size: int = 1,
    ) -> None:
        super().__init__(sglang_scheduler_pb2, card, tokenizer)
        self.role = role
        self.data_parallel_size = data_parallel_size

    def parse_generate(self, request: sglang_scheduler_pb2.GenerateRequest) -> GenerationParams:
        sp = request.sampling_params
        seed: int | None = None
        if sp.HasField("custom_params"):
            # SGLang takes a per-request seed as sampling_seed; the proto has no field of its own.
            value = sp.custom_params.fields.get("sampling_seed")
            if value is not None and value.WhichOneof("kind") == "number_value":
                seed = int(value.number_value)
        params = GenerationParams(
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
        if self.role == "regular":
            return params
        return self._disaggregated(request, params)

    @property
    def max_embed_len(self) -> int:
        # SGLang refuses an input of the context length or more, as its max_req_input_len says.
        return self.card.max_context_length - 1

    def parse_embed(self, request: sglang_scheduler_pb2.EmbedRequest) -> EmbedParams:
        if not request.HasField("tokenized"):
            raise ValueError("EmbedRequest carries no tokenized input")
        # data_parallel_rank has no presence here: 0 cannot be told from unset, so only a
        # nonzero rank pins the call.
        rank = request.data_parallel_rank
        return EmbedParams(
            request_id=request.request_id,
            input_ids=list(request.tokenized.input_ids),
            token_type_ids=list(request.token_type_ids) or None,
            data_parallel_rank=rank or None,
        )

    def _disaggregated(
        self, request: sglang_scheduler_pb2.GenerateRequest, params: GenerationParams
    ) -> GenerationParams:
        """A PD request: SGLang pairs a prefill and a decode by the bootstrap room they share."""
        if not request.HasField("disaggregated_params"):
            raise ValueError(
                f"{self.role} worker needs a bootstrap room (disaggregated_params.bootstrap_room)"
            )
        pd = request.disaggregated_params
        room = pd.bootstrap_room
        label = f"bootstrap room {room}"
        if self.role == "decode":
            if not pd.bootstrap_host or pd.bootstrap_port <= 0:
                raise ValueError(
                    "decode worker needs the prefill's bootstrap_host and bootstrap_port "
                    "(disaggregated_params)"
                )
            handoff = DecodeHandoff(
                host=pd.bootstrap_host,
                port=pd.bootstrap_port,
                room=str(room),
                label=label,
                wait_unknown=True,
            )
            return dataclasses.replace(params, handoff=handoff)
        # SGLang's DP prefill follows the bootstrap room (follow_bootstrap_room), so the decode
        # side can tell which prefill rank holds a room's KV.
        size = self.data_parallel_size
        rank = room % size
        if params.data_parallel_rank is not None and params.data_parallel_rank != rank:
            raise ValueError(
                f"data_parallel_rank {params.data_parallel_rank} does not follow the bootstrap "
                f"room: the rank must follow the bootstrap room ({room} % dp_size {size} = "
                f"{rank})"
            )
        # SGLang's prefill server answers with the first token only, in one GenerateComplete per
        # choice, whatever max_new_tokens and stream say.
        return dataclasses.replace(
            params,
            max_tokens=1,
            stream=False,
            data_parallel_rank=rank,
            handoff=PrefillHandoff(room=str(room), label=label),
        )
