"""--stats-file: the sim's cumulative counters as JSON, written on SIGUSR1 and at exit.

GetLoads and the KV-event stream report loads and a lifetime cache hit *rate*, never totals. A
benchmark that wants requests per engine, or the hit rate within its own measured window, signals
the sim at the window's start and end and subtracts the two snapshots. The file is replaced
atomically, and its `sequence` grows with every write, so a reader knows when its signal has been
answered.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from herdsman.sim.dp_engine import DataParallelEngine


def stats(engine: DataParallelEngine, sequence: int) -> dict[str, Any]:
    hub = engine.hub
    return {
        "sequence": sequence,
        "time": time.time(),
        # Whether a router reads the KV events at all (None: --no-kv-events).
        "kv_subscribers": None if hub is None else hub.subscriber_count,
        # PD disaggregation (--role): KV handed to decodes (sent) and freed unfetched
        # (expired) by a prefill; fetched (received), not arrived in time (timed_out) and
        # refused by the prefill (failed) on a decode.
        "role": engine.options.role,
        "kv_handoffs": engine.handoffs.counters.as_dict(),
        "ranks": [
            {
                "rank": rank.rank,
                # Generate and Embed calls accepted (what a router sent here), prompts looked
                # up in the prefix cache at admission, and the leading tokens it served.
                "requests": rank.requests_received,
                "prompt_tokens": rank.cache.queried_tokens,
                "cached_tokens": rank.cache.hit_tokens,
                "generated_tokens": rank.total_generated,
                "cache_blocks": len(rank.cache),
                # Decode steps taken, and (--prefill-stalls-decode) steps held back by
                # prefills and the time they were pushed back by in all.
                "decode_steps": rank.decode_steps,
                "decode_stalls": rank.decode_stalls,
                "decode_stall_ms": round(rank.decode_stall_s * 1000.0, 3),
                # --pooling: the Embed calls among the requests, and their input tokens.
                "embed_requests": rank.embed_requests,
                "embed_prompt_tokens": rank.embed_prompt_tokens,
            }
            for rank in engine.ranks
        ],
    }


class StatsFile:
    def __init__(self, path: Path, engine: DataParallelEngine) -> None:
        self.path = path
        self._engine = engine
        self._sequence = 0

    def write(self) -> None:
        self._sequence += 1
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(stats(self._engine, self._sequence)))
        os.replace(temporary, self.path)
