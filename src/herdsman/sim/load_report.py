"""GetLoads content shared by both protocols (their SchedulerLoad messages agree on core fields)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from herdsman.sim.engine import LoadSnapshot

SIM_VERSION = "engine-sim-0.1.0"


def iso_timestamp() -> str:
    return datetime.now(UTC).isoformat()


def scheduler_load(message_type: Any, snapshot: LoadSnapshot) -> Any:
    return message_type(
        dp_rank=0,
        num_running_reqs=snapshot.running,
        num_waiting_reqs=snapshot.waiting,
        num_total_reqs=snapshot.running + snapshot.waiting,
        num_used_tokens=snapshot.used_tokens,
        max_total_num_tokens=snapshot.capacity_tokens,
        token_usage=snapshot.token_usage,
        gen_throughput=snapshot.gen_throughput,
        cache_hit_rate=snapshot.cache_hit_rate,
        utilization=min(snapshot.running / snapshot.max_running, 1.0)
        if snapshot.max_running
        else 0.0,
        max_running_requests=snapshot.max_running,
        num_waiting_uncached_tokens=snapshot.waiting_uncached_tokens,
    )


def wants_rank_zero(request: Any) -> bool:
    """The sim is a single DP rank: a filter naming another rank selects nothing."""
    return not request.HasField("dp_rank") or request.dp_rank == 0
