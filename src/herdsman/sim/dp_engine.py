"""The engine a servicer talks to: --data-parallel-size independent schedulers in one process.

Each rank is a full `SimEngine` (its own running set, queue, prefix cache, load and KV events,
tagged with its `dp_rank`), the way a vLLM or SGLang engine started with data parallelism runs one
scheduler per rank behind one endpoint. A Generate call pinned to a rank (`data_parallel_rank`)
goes there; the rest are spread round-robin.
"""

from __future__ import annotations

import asyncio
import random
import time

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.disagg import KvHandoffs
from herdsman.sim.engine import SimEngine
from herdsman.sim.kv_events import KvEventHub
from herdsman.sim.load_report import LoadSnapshot
from herdsman.sim.model_card import ModelCard
from herdsman.sim.options import SimOptions
from herdsman.sim.pooling import PoolingModel
from herdsman.sim.sim_request import EmbedCall, EmbedParams, GenerationParams, SimRequest
from herdsman.sim.text_source import TextSource

# The history keeps at least this many blocks' worth of batches, and at most twice the caches.
_MIN_HISTORY_BLOCKS = 4096
_FLUSH_POLL_S = 0.01


class DataParallelEngine:
    def __init__(
        self, options: SimOptions, card: ModelCard, text: TextSource, abort_log: AbortLog
    ) -> None:
        self.options = options
        self.card = card
        self.abort_log = abort_log
        # --pooling: the model Embed runs (None: a generation model, which cannot embed).
        self.pooling = PoolingModel.from_options(options)
        size = options.data_parallel_size
        self.hub: KvEventHub | None = None
        if options.kv_events:
            self.hub = KvEventHub(
                block_size=options.block_size,
                history_batches=options.kv_history,
                history_blocks=max(2 * options.cache_blocks * size, _MIN_HISTORY_BLOCKS),
                heartbeat_s=options.kv_heartbeat_ms / 1000.0,
            )
        self.ranks = [
            SimEngine(options, card, text, abort_log, rank=rank, hub=self.hub)
            for rank in range(size)
        ]
        if self.hub is not None:
            self.hub.attach(self.ranks)
        # --role prefill/decode: the KV handoff (the prefill's rooms and handoff server).
        self.handoffs = KvHandoffs(options)
        self._next_rank = 0
        self._busy_draws = random.Random(options.seed)
        self.started_monotonic = time.monotonic()
        self.started_wall = time.time()
        self.last_receive_timestamp = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for rank in self.ranks:
            rank.start()

    async def stop(self) -> None:
        for rank in self.ranks:
            await rank.stop()

    # ---- requests --------------------------------------------------------------------------

    def refuses_busy(self) -> bool:
        """Whether the next Generate call is refused with RESOURCE_EXHAUSTED (--busy*)."""
        opts = self.options
        if opts.busy:
            return True
        return opts.busy_fraction > 0 and self._busy_draws.random() < opts.busy_fraction

    def _pick_rank(self, pinned: int | None) -> SimEngine:
        size = len(self.ranks)
        rank = pinned
        if rank is None:
            rank = self._next_rank
            self._next_rank = (rank + 1) % size
        elif not 0 <= rank < size:
            raise ValueError(f"data_parallel_rank {rank} is out of range [0, {size}).")
        return self.ranks[rank]

    def submit(self, params: GenerationParams) -> SimRequest:
        """Register a Generate call; raises ValueError for requests a real engine would refuse."""
        request = self._pick_rank(params.data_parallel_rank).submit(params)
        self.last_receive_timestamp = time.time()
        return request

    def submit_embed(self, params: EmbedParams) -> EmbedCall:
        """Register an Embed call; raises ValueError for a DP rank out of range."""
        call = self._pick_rank(params.data_parallel_rank).submit_embed(params)
        self.last_receive_timestamp = time.time()
        return call

    def release_embed(self, call: EmbedCall, *, cancelled: bool) -> None:
        self.ranks[call.rank].release_embed(call, cancelled=cancelled)

    def abort(self, request_id: str) -> int:
        """Explicit Abort RPC: ends every in-flight request with this id; returns how many."""
        self.abort_log.record("abort", request_id)
        found = sum(rank.abort(request_id) for rank in self.ranks)
        # A prefill whose request already finished still holds its KV for a decode: drop it.
        self.handoffs.abort(request_id)
        return found

    def rank_of(self, request: SimRequest) -> SimEngine:
        return self.ranks[request.rank]

    def release(self, request: SimRequest, *, cancelled: bool) -> None:
        """The Generate handler is done with `request`; `cancelled` when the client went away."""
        self.ranks[request.rank].release(request, cancelled=cancelled)

    # ---- cache -----------------------------------------------------------------------------

    async def flush_cache(self, timeout_s: float) -> tuple[bool, str]:
        """FlushCache: wait up to `timeout_s` for every rank to go idle, then drop every cache.

        With 0 it flushes at once, and fails if requests are in flight (common.proto).
        """
        deadline = time.monotonic() + timeout_s
        while self.active_requests:
            if time.monotonic() >= deadline:
                return False, f"{self.active_requests} request(s) in flight"
            await asyncio.sleep(_FLUSH_POLL_S)
        for rank in self.ranks:
            rank.flush_cache()
        return True, "prefix cache flushed"

    # ---- observability ---------------------------------------------------------------------

    @property
    def active_requests(self) -> int:
        return sum(rank.active_requests for rank in self.ranks)

    @property
    def capacity_tokens(self) -> int:
        """KV capacity of one rank (what each scheduler reports as its max_total_num_tokens)."""
        return self.ranks[0].cache.capacity_tokens

    def loads(self, ranks: range) -> list[LoadSnapshot]:
        return [self.ranks[rank].load() for rank in ranks]

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic
