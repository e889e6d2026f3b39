"""Request parsing for vllm.grpc.engine.VllmEngine."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from smg_grpc_proto.generated import vllm_engine_pb2
from tokenizers import Tokenizer

from herdsman.sim.logprobs import MAX_TOP_LOGPROBS
from herdsman.sim.model_card import ModelCard
from herdsman.sim.options import Role
from herdsman.sim.sim_request import (
    DecodeHandoff,
    EmbedParams,
    GenerationParams,
    PrefillHandoff,
    SimRequest,
    SimSequence,
)
from herdsman.sim.wire import ProtoWire


def _kv_transfer_params(request: vllm_engine_pb2.GenerateRequest) -> dict[str, Any] | None:
    if not request.HasField("kv_transfer_params_json"):
        return None
    try:
        params = json.loads(request.kv_transfer_params_json)
    except ValueError as exc:
        raise ValueError(f"kv_transfer_params_json is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError("kv_transfer_params_json is not a JSON object")
    return params


def _remote_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"kv_transfer_params remote_port {value!r} is not a port")
    return value


class VllmWire(ProtoWire):
    backend = "vllm"
    server_type = "vllm-grpc"

    def __init__(self, card: ModelCard, tokenizer: Tokenizer, *, role: Role = "regular") -> None:
        super().__init__(vllm_engine_pb2, card, tokenizer)
        self.role = role

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
        params = GenerationParams(
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
        if self.role == "prefill":
            return self._prefill(request, params)
        if self.role == "decode":
            return self._decode(request, params)
        return params

    def parse_embed(self, request: vllm_engine_pb2.EmbedRequest) -> EmbedParams:
        # vllm_engine.proto's EmbedRequest has no token types nor DP rank.
        if not request.HasField("tokenized"):
            raise ValueError("EmbedRequest carries no tokenized input")
        return EmbedParams(
            request_id=request.request_id, input_ids=list(request.tokenized.input_ids)
        )

    def _prefill(
        self, request: vllm_engine_pb2.GenerateRequest, params: GenerationParams
    ) -> GenerationParams:
        """A kv_producer: do_remote_decode requests are cut to one token, the rest served as is."""
        kv = _kv_transfer_params(request)
        if kv is None or kv.get("do_remote_decode") is not True:
            return params
        handoff = PrefillHandoff(room=params.request_id, label=f"request {params.request_id}")
        return dataclasses.replace(params, max_tokens=1, handoff=handoff)

    def _decode(
        self, request: vllm_engine_pb2.GenerateRequest, params: GenerationParams
    ) -> GenerationParams:
        """A kv_consumer: every request fetches its KV from the prefill its params name."""
        kv = _kv_transfer_params(request)
        if kv is not None and kv.get("do_remote_prefill") is True:
            host = kv.get("remote_host")
            if not isinstance(host, str) or not host:
                raise ValueError("kv_transfer_params names no remote_host")
            remote_id = kv.get("remote_request_id") or params.request_id
            if not isinstance(remote_id, str):
                raise ValueError(f"kv_transfer_params remote_request_id {remote_id!r}")
            block_ids = kv.get("remote_block_ids")
            if block_ids is not None and (
                not isinstance(block_ids, list)
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_ids)
            ):
                raise ValueError("kv_transfer_params remote_block_ids is not a list of ints")
            handoff = DecodeHandoff(
                host=host,
                port=_remote_port(kv.get("remote_port")),
                room=remote_id,
                label=f"request {remote_id}",
                wait_unknown=False,
                block_ids=None if block_ids is None else tuple(block_ids),
            )
        elif request.HasField("kv_transfer_params"):
            # The deprecated typed field (Mooncake): the prefill's address, keyed by request id.
            typed = request.kv_transfer_params
            if not typed.remote_host:
                raise ValueError("kv_transfer_params names no remote_host")
            handoff = DecodeHandoff(
                host=typed.remote_host,
                port=_remote_port(typed.remote_port),
                room=params.request_id,
                label=f"request {params.request_id}",
                wait_unknown=False,
            )
        else:
            raise ValueError(
                "decode worker needs kv_transfer_params from a prefill "
                '(kv_transfer_params_json with "do_remote_prefill": true)'
            )
        return dataclasses.replace(params, handoff=handoff)

    def complete(self, request: SimRequest, seq: SimSequence) -> Any:
        response = super().complete(request, seq)
        params = request.handoff_params
        if params is not None and seq.finish_reason not in ("abort", "error"):
            # A PD prefill tells the decode where its KV is, as the NIXL connector does (and in
            # the deprecated typed field, for older routers).
            complete = response.complete
            complete.kv_transfer_params_json = json.dumps(params)
            complete.kv_transfer_params.remote_host = params["remote_host"]
            complete.kv_transfer_params.remote_port = params["remote_port"]
        return response
