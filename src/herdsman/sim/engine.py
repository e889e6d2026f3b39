"""The simulated engine's scheduler: one asyncio task stepping every running sequence.

Like a real engine's step loop, a single task advances the whole batch and then sleeps one
inter-token latency, so the cost per token is a few attribute updates and no timer. Requests go
PENDING (queued behind --max-num-seqs) -> PREFILL (waiting out their TTFT) -> RUNNING; the
Generate handlers only drain what the loop appended and are woken through `SimRequest.wake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.model_card import ModelCard
from herdsman.sim.options import SimOptions
from herdsman.sim.prefix_cache import PrefixCache
from herdsman.sim.sim_request import GenerationParams, RequestState, SimRequest, SimSequence
from herdsman.sim.text_source import TextSource

logger = logging.getLogger(__name__)

_NEVER = 1 << 62
_THROUGHPUT_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    running: int
    waiting: int
    waiting_uncached_tokens: int
    used_tokens: int
    capacity_tokens: int
    cache_hit_rate: float
    gen_throughput: float
    max_running: int

    @property
    def token_usage(self) -> float:
        return min(self.used_tokens / self.capacity_tokens, 1.0) if self.capacity_tokens else 0.0


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SimEngine:
    def __init__(
        self, options: SimOptions, card: ModelCard, text: TextSource, abort_log: AbortLog
    ) -> None:
        self.options = options
        self.card = card
        self.abort_log = abort_log
        self.cache = PrefixCache(options.cache_blocks)
        self._corpus = text.ids
        self._text = text
        self._eos_ids = frozenset(card.eos_token_ids)
        self._eos_token = card.eos_token_ids[0] if card.eos_token_ids else None
        self._inflight: dict[str, list[SimRequest]] = {}
        self._pending: deque[SimRequest] = deque()
        self._pending_seqs = 0
        self._prefill: list[tuple[float, int, SimRequest]] = []
        self._prefill_order = itertools.count()
        self._running: list[SimSequence] = []
        self._hung = 0
        # Sequences holding a --max-num-seqs slot (prefilling or decoding).
        self._slots_used = 0
        self._next_decode_at = 0.0
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        fault_limits = [
            n for n in (options.fail_after_tokens, options.exit_after_tokens) if n is not None
        ]
        self._fault_at = min(fault_limits) if fault_limits else _NEVER
        self._hang_at = options.hang_after_tokens or _NEVER
        self._busy_draws = random.Random(options.seed)
        self.active_requests = 0
        self.total_generated = 0
        self.started_monotonic = time.monotonic()
        self.started_wall = time.time()
        self.last_receive_timestamp = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._rate = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine-sim-step")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- requests --------------------------------------------------------------------------

    def refuses_busy(self) -> bool:
        """Whether the next Generate call is refused with RESOURCE_EXHAUSTED (--busy*)."""
        opts = self.options
        if opts.busy:
            return True
        return opts.busy_fraction > 0 and self._busy_draws.random() < opts.busy_fraction

    def submit(self, params: GenerationParams) -> SimRequest:
        """Register a Generate call; raises ValueError for requests a real engine would refuse."""
        prompt_len = len(params.prompt_ids)
        max_context = self.card.max_context_length
        if prompt_len == 0:
            raise ValueError("the prompt is empty")
        if prompt_len >= max_context:
            raise ValueError(
                f"The prompt (length {prompt_len}) plus the number of requested output tokens "
                f"(at least 1) is longer than the maximum model length of {max_context}."
            )
        opts = self.options
        max_tokens = opts.default_max_tokens if params.max_tokens is None else params.max_tokens
        max_tokens = min(max_tokens, max_context - prompt_len)
        key = hash((opts.seed, -1 if params.seed is None else params.seed, *params.prompt_ids))
        request = SimRequest(params, key)
        eos_at = -1
        if opts.eos_after is not None and self._eos_token is not None and not params.ignore_eos:
            eos_at = max(opts.eos_after, params.min_tokens)
        for index in range(max(params.n, 1)):
            cursor = self._text.start_for(hash((key, index)))
            request.sequences.append(SimSequence(request, index, cursor, max_tokens, eos_at))

        self._inflight.setdefault(params.request_id, []).append(request)
        self.active_requests += 1
        self.last_receive_timestamp = time.time()
        if opts.hang:
            request.state = RequestState.HUNG
            self._hung += 1
            return request
        self._pending.append(request)
        self._pending_seqs += len(request.sequences)
        self._kick()
        return request

    def abort(self, request_id: str) -> int:
        """Explicit Abort RPC: ends every in-flight request with this id; returns how many."""
        self.abort_log.record("abort", request_id)
        requests = self._inflight.get(request_id, ())
        for request in list(requests):
            self._end_early(request)
        return len(requests)

    def release(self, request: SimRequest, *, cancelled: bool) -> None:
        """The Generate handler is done with `request`; `cancelled` when the client went away."""
        same_id = self._inflight.get(request.params.request_id)
        if same_id is not None and request in same_id:
            same_id.remove(request)
            if not same_id:
                del self._inflight[request.params.request_id]
            self.active_requests -= 1
        if not request.done:
            if cancelled:
                self.abort_log.record("cancel", request.params.request_id)
            self._end_early(request)

    def _end_early(self, request: SimRequest) -> None:
        previous = request.state
        if request.done:
            return
        request.state = RequestState.ABORTED
        if previous is RequestState.PENDING:
            self._pending_seqs -= len(request.sequences)
        elif previous is RequestState.HUNG:
            self._hung -= 1
        for seq in request.sequences:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
                if previous in (RequestState.PREFILL, RequestState.RUNNING):
                    self._slots_used -= 1
        if previous is RequestState.RUNNING:
            self._remember(request)
        request.wake.set()
        self._kick()

    # ---- the step loop ---------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wakeup is not None:
            _wake(self._wakeup)

    async def _sleep_until(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._wakeup = future
        handle = loop.call_at(deadline, _wake, future) if deadline is not None else None
        try:
            await future
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        itl_base = opts.itl_base_ms / 1000.0
        itl_per_running = opts.itl_per_running_ms / 1000.0
        while True:
            now = loop.time()
            if self._running and now >= self._next_decode_at:
                self._decode()
                self._next_decode_at = now + itl_base + itl_per_running * len(self._running)
            self._admit(now)
            self._start_ready(now)

            deadline: float | None = None
            if self._running:
                deadline = self._next_decode_at
            if self._prefill:
                ready = self._prefill[0][0]
                deadline = ready if deadline is None else min(deadline, ready)
            if deadline is not None and deadline <= loop.time():
                # Zero-latency settings: yield once so handlers can ship what was produced.
                await asyncio.sleep(0)
            else:
                await self._sleep_until(deadline)

    def _admit(self, now: float) -> None:
        opts = self.options
        pending = self._pending
        ttft_base = opts.ttft_base_ms / 1000.0
        prefill_per_token = opts.prefill_ms_per_1k / 1_000_000.0
        while pending:
            request = pending[0]
            if request.state is not RequestState.PENDING:
                pending.popleft()
                continue
            n = len(request.sequences)
            # An oversized request still runs on an idle engine rather than waiting forever.
            if self._slots_used + n > opts.max_num_seqs and self._slots_used > 0:
                break
            pending.popleft()
            self._pending_seqs -= n
            self._slots_used += n
            cached = self.cache.lookup(request.params.prompt_ids)
            request.cached_tokens = cached
            request.ready_at = now + ttft_base + prefill_per_token * (request.prompt_len - cached)
            request.state = RequestState.PREFILL
            heapq.heappush(self._prefill, (request.ready_at, next(self._prefill_order), request))

    def _start_ready(self, now: float) -> None:
        prefill = self._prefill
        was_idle = not self._running
        while prefill and prefill[0][0] <= now:
            request = heapq.heappop(prefill)[2]
            if request.state is not RequestState.PREFILL:
                continue
            request.state = RequestState.RUNNING
            # Prompt blocks become reusable once prefill has computed them.
            self.cache.insert(request.params.prompt_ids)
            for seq in request.sequences:
                if seq.finish_reason is not None:  # a sibling's injected fault ended it
                    continue
                if seq.max_tokens <= 0:
                    self._finish(seq, "length")
                    continue
                self.total_generated += 1
                if self._advance(seq):
                    self._running.append(seq)
            # The first token goes out at once whatever --tokens-per-message says: it is the TTFT.
            request.wake.set()
        if was_idle and self._running:
            self._next_decode_at = now + self.options.itl_base_ms / 1000.0

    def _decode(self) -> None:
        still_running: list[SimSequence] = []
        advance = self._advance
        produced = 0
        for seq in self._running:
            # Sequences ended by abort/cancel/fault since the last step drop out here.
            if seq.finish_reason is not None:
                continue
            produced += 1
            if advance(seq):
                still_running.append(seq)
        self.total_generated += produced
        self._running = still_running

    def _advance(self, seq: SimSequence) -> bool:
        """Produce one token for `seq`; returns whether it keeps running."""
        output = seq.output
        position = len(output)
        if position == seq.eos_at:
            token = self._eos_token
            assert token is not None
        else:
            token = self._corpus[seq.cursor]
            seq.cursor += 1
            if seq.cursor == len(self._corpus):
                seq.cursor = 0
        output.append(token)
        position += 1
        request = seq.request
        params = request.params
        if position >= seq.max_tokens:
            self._finish(seq, "length")
            return False
        if position >= params.min_tokens:
            if token in self._eos_ids and not params.ignore_eos:
                seq.stopped_by_eos = True
                seq.matched_token_id = token
                self._finish(seq, "stop")
                return False
            if token in params.stop_token_ids:
                seq.matched_token_id = token
                self._finish(seq, "stop")
                return False
        if position >= self._fault_at:
            self._inject_fault(request)
            return False
        if position >= self._hang_at:
            # --hang-after-tokens: keeps its slot and its open stream, never advances again.
            seq.hung = True
            request.wake.set()
            return False
        if params.stream and position - seq.flushed >= self.options.tokens_per_message:
            request.wake.set()
        return True

    def _finish(self, seq: SimSequence, reason: str) -> None:
        seq.finish_reason = reason
        self._slots_used -= 1
        request = seq.request
        request.wake.set()
        for other in request.sequences:
            if other.finish_reason is None:
                return
        request.state = RequestState.FINISHED
        self._remember(request)
        self._kick()

    def _inject_fault(self, request: SimRequest) -> None:
        opts = self.options
        exit_limit = opts.exit_after_tokens
        request.exit_now = exit_limit is not None and (
            opts.fail_after_tokens is None or exit_limit <= opts.fail_after_tokens
        )
        logger.warning(
            "injecting %s into %s after %d tokens",
            "process exit" if request.exit_now else "INTERNAL error",
            request.params.request_id,
            request.generated_tokens,
        )
        request.state = RequestState.FAILED
        for seq in request.sequences:
            if seq.finish_reason is None:
                seq.finish_reason = "error"
                self._slots_used -= 1
        request.wake.set()
        self._kick()

    def _remember(self, request: SimRequest) -> None:
        # Output blocks stay cached too, which is what makes a follow-up chat turn hit.
        prompt = request.params.prompt_ids
        for seq in request.sequences:
            if seq.output:
                self.cache.insert(prompt + seq.output)

    # ---- observability ---------------------------------------------------------------------

    def gen_throughput(self) -> float:
        now = time.monotonic()
        mark_time, mark_tokens = self._rate_mark
        elapsed = now - mark_time
        if elapsed >= _THROUGHPUT_WINDOW_S:
            self._rate = (self.total_generated - mark_tokens) / elapsed
            self._rate_mark = (now, self.total_generated)
        return self._rate

    def load(self) -> LoadSnapshot:
        used = 0
        waiting_uncached = 0
        for requests in self._inflight.values():
            for request in requests:
                if request.state is RequestState.PENDING:
                    waiting_uncached += request.prompt_len
                elif not request.done:
                    used += request.prompt_len + request.generated_tokens
        return LoadSnapshot(
            running=self._slots_used + self._hung,
            waiting=self._pending_seqs,
            waiting_uncached_tokens=waiting_uncached,
            used_tokens=used,
            capacity_tokens=self.cache.capacity_tokens,
            cache_hit_rate=self.cache.hit_rate,
            gen_throughput=self.gen_throughput(),
            max_running=self.options.max_num_seqs,
        )

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic
