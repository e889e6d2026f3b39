"""vllm.grpc.engine.VllmEngine served by the simulated engine.

RPCs not overridden here (profiling) keep the generated base class's UNIMPLEMENTED behaviour;
SubscribeKvEvents does too under --no-kv-events. Embed serves a --pooling model
(embed_handler.py).
"""

from __future__ import annotations

import grpc
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2, vllm_engine_pb2_grpc
from tokenizers import Tokenizer

from herdsman.sim.dp_engine import DataParallelEngine
from herdsman.sim.embed_handler import run_embed
from herdsman.sim.generate_handler import run_generate
from herdsman.sim.kv_stream import serve_kv_events
from herdsman.sim.load_report import SIM_VERSION, iso_timestamp, scheduler_load, selected_ranks
from herdsman.sim.model_card import model_dtype
from herdsman.sim.tokenizer_bundle import LazyTokenizerBundle, stream_tokenizer_bundle
from herdsman.sim.vllm_wire import VllmWire

pb = vllm_engine_pb2

_KV_ROLES = {"regular": "", "prefill": "kv_producer", "decode": "kv_consumer"}


class VllmSimServicer(vllm_engine_pb2_grpc.VllmEngineServicer):
    def __init__(
        self, engine: DataParallelEngine, tokenizer: Tokenizer, bundle: LazyTokenizerBundle
    ) -> None:
        self._engine = engine
        self._wire = VllmWire(engine.card, tokenizer, role=engine.options.role)
        self._wire.prompt_logprobs_once = engine.options.prompt_logprobs_once
        self._bundle = bundle

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await run_generate(self._engine, self._wire, request, context)

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        response: pb.EmbedResponse = await run_embed(self._engine, self._wire, request, context)
        return response

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortResponse:
        for request_id in request.request_ids:
            self._engine.abort(request_id)
        return pb.AbortResponse()

    async def HealthCheck(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.HealthCheckResponse:
        if self._engine.options.reject_new:
            return pb.HealthCheckResponse(
                healthy=False, message="engine-sim rejects new requests (--reject-new)"
            )
        return pb.HealthCheckResponse(healthy=True, message="Health")

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        card = self._engine.card
        # vllm_engine.proto has no classifier fields (id2label, num_labels).
        return pb.GetModelInfoResponse(
            model_path=card.model_path,
            is_generation=self._engine.pooling is None,
            max_context_length=card.max_context_length,
            vocab_size=card.vocab_size,
            supports_vision=False,
            served_model_name=card.served_model_name,
            tokenizer_path=card.model_path,
            model_type=card.model_type,
            architectures=card.architectures,
            eos_token_ids=card.eos_token_ids,
            pad_token_id=card.pad_token_id or 0,
            bos_token_id=card.bos_token_id or 0,
            max_req_input_len=card.max_context_length,
            default_sampling_params_json=card.default_sampling_params_json,
        )

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        engine = self._engine
        opts = engine.options
        # A PD sim reports itself as vLLM with a NIXL kv_transfer_config of its role.
        pd = opts.role != "regular"
        return pb.GetServerInfoResponse(
            active_requests=engine.active_requests,
            is_paused=False,
            last_receive_timestamp=engine.last_receive_timestamp,
            uptime_seconds=engine.uptime_seconds,
            server_type=self._wire.server_type,
            kv_connector="NixlConnector" if pd else "",
            kv_role=_KV_ROLES[opts.role],
            kv_engine_id=engine.handoffs.engine_id,
            data_parallel_size=len(engine.ranks),
            kv_cache_dtype=opts.kv_cache_dtype,
            block_size=opts.block_size,
            attention_backend=opts.attention_backend,
            model_dtype=model_dtype(opts, engine.card),
            pairing_protocol=opts.pairing_protocol,
            max_num_seqs=opts.max_num_seqs,
        )

    async def GetLoads(
        self, request: pb.GetLoadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadsResponse:
        engine = self._engine
        snapshots = engine.loads(selected_ranks(request, len(engine.ranks)))
        return pb.GetLoadsResponse(
            timestamp=iso_timestamp(),
            version=SIM_VERSION,
            dp_rank_count=len(snapshots),
            loads=[scheduler_load(pb.SchedulerLoad, snapshot) for snapshot in snapshots],
        )

    async def SubscribeKvEvents(
        self, request: common_pb2.SubscribeKvEventsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await serve_kv_events(self._engine.hub, request, context)

    async def FlushCache(
        self, request: common_pb2.FlushCacheRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.FlushCacheResponse:
        success, message = await self._engine.flush_cache(request.timeout_s)
        return common_pb2.FlushCacheResponse(success=success, message=message)

    async def GetTokenizer(
        self, request: common_pb2.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await stream_tokenizer_bundle(await self._bundle.get(), context)
