"""sglang.grpc.scheduler.SglangScheduler served by the simulated engine.

RPCs not overridden here (profiling, LoRA) keep the generated base class's UNIMPLEMENTED
behaviour; SubscribeKvEvents does too under --no-kv-events. Embed serves a --pooling model
(embed_handler.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2, sglang_scheduler_pb2_grpc
from tokenizers import Tokenizer

from herdsman.sim.dp_engine import DataParallelEngine
from herdsman.sim.embed_handler import run_embed
from herdsman.sim.generate_handler import run_generate
from herdsman.sim.kv_stream import serve_kv_events
from herdsman.sim.load_report import (
    SIM_VERSION,
    disaggregation_metrics,
    iso_timestamp,
    scheduler_load,
    selected_ranks,
)
from herdsman.sim.model_card import model_dtype
from herdsman.sim.sglang_wire import SglangWire
from herdsman.sim.tokenizer_bundle import LazyTokenizerBundle, stream_tokenizer_bundle

pb = sglang_scheduler_pb2


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


class SglangSimServicer(sglang_scheduler_pb2_grpc.SglangSchedulerServicer):
    def __init__(
        self, engine: DataParallelEngine, tokenizer: Tokenizer, bundle: LazyTokenizerBundle
    ) -> None:
        self._engine = engine
        self._wire = SglangWire(
            engine.card,
            tokenizer,
            role=engine.options.role,
            data_parallel_size=len(engine.ranks),
        )
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
        found = self._engine.abort(request.request_id)
        return pb.AbortResponse(
            success=True,
            message=f"aborted {found} request(s)" if found else "request not in flight",
        )

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
        pooling = self._engine.pooling
        return pb.GetModelInfoResponse(
            model_path=card.model_path,
            tokenizer_path=card.model_path,
            is_generation=pooling is None,
            weight_version="default",
            served_model_name=card.served_model_name,
            max_context_length=card.max_context_length,
            vocab_size=card.vocab_size,
            supports_vision=False,
            model_type=card.model_type,
            eos_token_ids=card.eos_token_ids,
            pad_token_id=card.pad_token_id or 0,
            bos_token_id=card.bos_token_id or 0,
            max_req_input_len=card.max_context_length - 1,
            architectures=card.architectures,
            default_sampling_params_json=card.default_sampling_params_json,
            # A classifier's labels (an embedding model, like a generation model, has none).
            id2label_json=pooling.id2label_json if pooling is not None else "",
            num_labels=pooling.num_labels if pooling is not None else 0,
        )

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        engine = self._engine
        opts = engine.options
        card = engine.card
        start_time = timestamp_pb2.Timestamp()
        start_time.FromNanoseconds(int(engine.started_wall * 1e9))
        aborts = engine.abort_log
        server_args: dict[str, Any] = {
            "model_path": card.model_path,
            "tokenizer_path": card.model_path,
            "served_model_name": card.served_model_name,
            "context_length": card.max_context_length,
            "max_running_requests": opts.max_num_seqs,
            "page_size": opts.block_size,
            "tp_size": 1,
            "dp_size": len(engine.ranks),
            # SGLang spells the model dtype without torch's prefix.
            "dtype": model_dtype(opts, card).removeprefix("torch."),
            "disaggregation_mode": "null" if opts.role == "regular" else opts.role,
            "kv_cache_dtype": opts.kv_cache_dtype,
            "attention_backend": opts.attention_backend,
            "pairing_protocol": opts.pairing_protocol,
        }
        if opts.role == "prefill":
            server_args["disaggregation_bootstrap_port"] = engine.handoffs.bootstrap_port
        return pb.GetServerInfoResponse(
            server_args=_struct(server_args),
            scheduler_info=_struct(
                {
                    "max_total_num_tokens": engine.capacity_tokens,
                    "aborted_requests": aborts.counts["abort"],
                    "cancelled_requests": aborts.counts["cancel"],
                    "recent_aborts": [f"{kind} {rid}" for kind, rid in aborts.recent],
                }
            ),
            active_requests=engine.active_requests,
            is_paused=False,
            last_receive_timestamp=engine.last_receive_timestamp,
            uptime_seconds=engine.uptime_seconds,
            sglang_version=SIM_VERSION,
            server_type=self._wire.server_type,
            start_time=start_time,
            max_total_num_tokens=engine.capacity_tokens,
        )

    async def GetLoads(
        self, request: pb.GetLoadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadsResponse:
        engine = self._engine
        snapshots = engine.loads(selected_ranks(request, len(engine.ranks)))
        loads = [scheduler_load(pb.SchedulerLoad, snapshot) for snapshot in snapshots]
        # Like SGLang: the optional sections come when asked for ("all" or by name).
        include = set(request.include)
        if include & {"all", "disagg"}:
            for load, snapshot in zip(loads, snapshots, strict=True):
                if snapshot.disaggregation is not None:
                    load.disaggregation.CopyFrom(
                        disaggregation_metrics(pb.DisaggregationMetrics, snapshot.disaggregation)
                    )
        running = sum(load.num_running_reqs for load in loads)
        waiting = sum(load.num_waiting_reqs for load in loads)
        count = len(loads) or 1
        return pb.GetLoadsResponse(
            timestamp=iso_timestamp(),
            version=SIM_VERSION,
            dp_rank_count=len(loads),
            loads=loads,
            aggregate=pb.AggregateMetrics(
                total_running_reqs=running,
                total_waiting_reqs=waiting,
                total_reqs=running + waiting,
                avg_token_usage=sum(load.token_usage for load in loads) / count,
                avg_throughput=sum(load.gen_throughput for load in loads) / count,
                avg_utilization=sum(load.utilization for load in loads) / count,
            ),
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
