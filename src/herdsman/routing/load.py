"""What an engine worker reports about its own load, as the routing policies read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerLoad:
    """The latest load record of one worker (one data-parallel rank of an engine).

    Filled from the ``EngineLoad`` records on the engine's KV-event stream (``source="events"``),
    or from ``GetLoads`` polling for engines that publish no events (``source="poll"``);
    ``source="none"`` until the first record arrives.
    """

    running: int = 0
    waiting: int = 0
    # Prompt tokens of waiting requests not served from the prefix cache (None: not reported).
    waiting_uncached_tokens: int | None = None
    # KV-cache utilization in [0, 1].
    token_usage: float = 0.0
    # The engine's admission window (max running requests); 0 when unknown.
    max_running: int = 0
    # The engine's prefix-cache hit rate in [0, 1] (None: not reported).
    cache_hit_rate: float | None = None
    # time.monotonic() of the record; 0.0: none yet.
    updated_at: float = 0.0
    source: str = "none"
