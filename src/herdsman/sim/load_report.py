"""Load reporting: one snapshot per DP rank, rendered as GetLoads' SchedulerLoad (both protocols
agree on the core fields) and as the EngineLoad record of the KV-event stream, so the two always
say the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smg_grpc_proto.generated import common_pb2

SIM_VERSION = "engine-sim-0.1.0"


@dataclass(frozen=True, slots=True)
class DisaggregationLoad:
    """A rank's PD disaggregation queues, in the terms of SGLang's DisaggregationMetrics."""

    mode: str  # "prefill", "decode", or "null" (--role regular)
    # Prefill: prefilled rooms whose KV no decode has fetched yet (SGLang's inflight queue).
    rooms_held: int
    # Decode: requests waiting for their prefill's KV (SGLang's prealloc queue) and those whose
    # KV is being transferred (its transfer queue).
    awaiting_kv: int
    receiving_kv: int
    # The last simulated transfer (0 before the first).
    kv_transfer_speed_gb_s: float
    kv_transfer_latency_ms: float


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    dp_rank: int
    running: int
    waiting: int
    waiting_uncached_tokens: int
    used_tokens: int
    capacity_tokens: int
    cache_hit_rate: float
    gen_throughput: float
    max_running: int
    # Prompt tokens of requests handed to the engine that have produced no output yet.
    prefill_pending_tokens: int
    # Milliseconds since the rank last produced output while it holds requests; None when idle.
    silence_ms: int | None
    disaggregation: DisaggregationLoad | None = None

    @property
    def token_usage(self) -> float:
        return min(self.used_tokens / self.capacity_tokens, 1.0) if self.capacity_tokens else 0.0

    @property
    def utilization(self) -> float:
        return min(self.running / self.max_running, 1.0) if self.max_running else 0.0


def iso_timestamp() -> str:
    return datetime.now(UTC).isoformat()


def disaggregation_metrics(message_type: Any, load: DisaggregationLoad) -> Any:
    """SGLang's DisaggregationMetrics or common.proto's EngineDisaggregation (the same fields).

    The sim starts a prefill at once (no bootstrap queue) and never retracts a decode.
    """
    return message_type(
        mode=load.mode,
        prefill_prealloc_queue_reqs=0,
        prefill_inflight_queue_reqs=load.rooms_held,
        decode_prealloc_queue_reqs=load.awaiting_kv,
        decode_transfer_queue_reqs=load.receiving_kv,
        decode_retracted_queue_reqs=0,
        kv_transfer_speed_gb_s=load.kv_transfer_speed_gb_s,
        kv_transfer_latency_ms=load.kv_transfer_latency_ms,
    )


def scheduler_load(message_type: Any, snapshot: LoadSnapshot) -> Any:
    return message_type(
        dp_rank=snapshot.dp_rank,
        num_running_reqs=snapshot.running,
        num_waiting_reqs=snapshot.waiting,
        num_total_reqs=snapshot.running + snapshot.waiting,
        num_used_tokens=snapshot.used_tokens,
        max_total_num_tokens=snapshot.capacity_tokens,
        token_usage=snapshot.token_usage,
        gen_throughput=snapshot.gen_throughput,
        cache_hit_rate=snapshot.cache_hit_rate,
        utilization=snapshot.utilization,
        max_running_requests=snapshot.max_running,
        num_waiting_uncached_tokens=snapshot.waiting_uncached_tokens,
    )


def engine_load(
    snapshot: LoadSnapshot, sample: int, *, load_only: bool, telemetry: bool
) -> common_pb2.EngineLoad:
    """The EngineLoad record of a KV-event batch.

    The telemetry beyond the routing core (hit rate, token counts) rides on heartbeats and a
    stream's first record only, as common.proto asks.
    """
    load = common_pb2.EngineLoad(
        running_requests=snapshot.running,
        waiting_requests=snapshot.waiting,
        waiting_uncached_tokens=snapshot.waiting_uncached_tokens,
        token_usage=snapshot.token_usage,
        # The sim's usage counts the requests' own tokens only, never the retained prefix
        # cache, so it is all non-evictable.
        active_token_usage=snapshot.token_usage,
        gen_throughput=snapshot.gen_throughput,
        max_running_requests=snapshot.max_running,
        age_ms=0,
        sample=sample,
        load_only=load_only,
        prefill_pending_tokens=snapshot.prefill_pending_tokens,
    )
    if snapshot.silence_ms is not None:
        load.engine_silence_ms = snapshot.silence_ms
    if telemetry:
        load.cache_hit_rate = snapshot.cache_hit_rate
        load.num_used_tokens = snapshot.used_tokens
        load.max_total_num_tokens = snapshot.capacity_tokens
        disaggregation = snapshot.disaggregation
        if disaggregation is not None and disaggregation.mode != "null":
            load.disaggregation.CopyFrom(
                disaggregation_metrics(common_pb2.EngineDisaggregation, disaggregation)
            )
    return load


def selected_ranks(request: Any, rank_count: int) -> range:
    """The ranks a GetLoads request asks about: its `dp_rank` filter, or all of them."""
    if not request.HasField("dp_rank"):
        return range(rank_count)
    rank = request.dp_rank
    return range(rank, rank + 1) if 0 <= rank < rank_count else range(0)
