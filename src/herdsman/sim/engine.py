"""The simulated engine's scheduler (one per DP rank): one asyncio task stepping every sequence.

Like a real engine's step loop, a single task advances the whole batch and then sleeps one
inter-token latency, so the cost per token is a few attribute updates and no timer. Requests go
PENDING (queued behind --max-num-seqs) -> PREFILL (waiting out their TTFT) -> RUNNING; the
Generate handlers only drain what the loop appended and are woken through `SimRequest.wake`.
A PD decode (--role decode) starts AWAITING_KV, then RECEIVING_KV while its handler fetches the
prefill's KV (sim/disagg.py), and is queued once it arrived, with no prefill left to simulate.

Timing: TTFT is --ttft-base-ms plus --prefill-ms-per-1k per prompt token the prefix cache did not
hold (with --serial-prefill, after the prefills admitted before it); each decode step takes
--itl-base-ms plus --itl-per-running-ms per running sequence. With --prefill-stalls-decode (an
engine without chunked prefill) prefills are serial and own the forward pass while they are
computed: prefills admitted back to back form one busy stretch, and a decode step falling due
inside it is held until the stretch ends, then takes its own ITL (prefills go first, as in
vLLM V0's default scheduler or SGLang with chunked prefill off).

The load counters are kept incrementally so a load record costs O(1), and the cache's changes go
to the KV-event hub as one batch per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.kv_events import KvEventHub
from herdsman.sim.load_report import DisaggregationLoad, LoadSnapshot
from herdsman.sim.model_card import ModelCard
from herdsman.sim.options import SimOptions
from herdsman.sim.prefix_cache import ROOT_KEY, PrefixCache
from herdsman.sim.sim_request import (
    DecodeHandoff,
    EmbedCall,
    EmbedParams,
    GenerationParams,
    RequestState,
    SimRequest,
    SimSequence,
)
from herdsman.sim.text_source import TextSource

logger = logging.getLogger(__name__)

_NEVER = 1 << 62
_THROUGHPUT_WINDOW_S = 1.0


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SimEngine:
    def __init__(
        self,
        options: SimOptions,
        card: ModelCard,
        text: TextSource,
        abort_log: AbortLog,
        *,
        rank: int = 0,
        hub: KvEventHub | None = None,
    ) -> None:
        self.options = options
        self.card = card
        self.abort_log = abort_log
        self.rank = rank
        self._hub = hub
        self.cache = PrefixCache(
            options.cache_blocks, options.block_size, record_events=hub is not None
        )
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
        # Load counters. Uncached prompt tokens of PENDING requests; prompt tokens of requests
        # with no output yet (PENDING, PREFILL, HUNG); prompt tokens of admitted unfinished
        # requests (PREFILL, RUNNING, HUNG) and the tokens they generated so far.
        self._pending_uncached = 0
        self._prefill_tokens = 0
        self._admitted_prompt_tokens = 0
        self._live_generated = 0
        # When the prefill of the last admitted request ends (--serial-prefill). Prefills are
        # scheduled back to back from admission, so the forward pass is computing a prefill
        # exactly while the clock is before this (--prefill-stalls-decode).
        self._prefill_free_at = 0.0
        self._stalls_decode = options.prefill_stalls_decode
        self._itl_base = options.itl_base_ms / 1000.0
        self._itl_per_running = options.itl_per_running_ms / 1000.0
        # Decode steps taken; and (--prefill-stalls-decode) how often a due step was held for
        # prefills, and the time by which steps were pushed back in all (seconds).
        self.decode_steps = 0
        self.decode_stalls = 0
        self.decode_stall_s = 0.0
        # time.monotonic() of the last output while busy, for engine_silence_ms.
        self._last_output = 0.0
        self._load_signature: tuple[int, int, int] = (0, 0, 0)
        # PD decodes waiting for the prefill's KV, and those whose KV is being transferred.
        self._awaiting_kv = 0
        self._receiving_kv = 0
        # PD prefill: finished rooms held for a decode (kept by the room registry), and what the
        # last simulated transfer took on either side.
        self.rooms_held = 0
        self.kv_transfer_ms = 0.0
        self.kv_transfer_gb_s = 0.0
        self.active_requests = 0
        # Generate and Embed calls accepted since start (--stats-file): how many a router sent
        # here; and of them, the Embed calls and their input tokens.
        self.requests_received = 0
        self.embed_requests = 0
        self.embed_prompt_tokens = 0
        # Embed calls in flight (--pooling), by request id; they hold no scheduler slot, but
        # count as running in loads and are found by Abort.
        self._embeds: dict[str, list[EmbedCall]] = {}
        self._embeds_running = 0
        self.total_generated = 0
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

    def submit(self, params: GenerationParams) -> SimRequest:
        """Register a Generate call; raises ValueError for requests a real engine would refuse.

        A PD decode is held (AWAITING_KV) until its handler reports the KV's arrival.
        """
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
        request.rank = self.rank
        eos_after, start = opts.eos_after, None
        after_tool = self._text.after_tool
        if after_tool is not None and after_tool.applies(params.prompt_ids):
            eos_after, start = after_tool.length, after_tool.start
        eos_at = -1
        if eos_after is not None and self._eos_token is not None and not params.ignore_eos:
            eos_at = max(eos_after, params.min_tokens)
        for index in range(max(params.n, 1)):
            cursor = self._text.start_for(hash((key, index))) if start is None else start
            request.sequences.append(SimSequence(request, index, cursor, max_tokens, eos_at))

        self._inflight.setdefault(params.request_id, []).append(request)
        self.active_requests += 1
        self.requests_received += 1
        if isinstance(params.handoff, DecodeHandoff) and not opts.hang:
            # Nothing to schedule before the KV is here, but Abort and cancel already find it.
            request.state = RequestState.AWAITING_KV
            self._awaiting_kv += 1
            self._kick()
            return request
        self._queue(request)
        return request

    def submit_embed(self, params: EmbedParams) -> EmbedCall:
        """Register an Embed call; its forward pass is one prefill of its input's length, timed
        like a Generate call's (no prefix cache: it stores no KV)."""
        prompt_len = len(params.input_ids)
        ready_at = self._prefill_ready_at(asyncio.get_running_loop().time(), prompt_len)
        call = EmbedCall(params, self.rank, ready_at)
        self._embeds.setdefault(params.request_id, []).append(call)
        self.active_requests += 1
        self.requests_received += 1
        self.embed_requests += 1
        self.embed_prompt_tokens += prompt_len
        self._embeds_running += 1
        self._prefill_tokens += prompt_len
        self._admitted_prompt_tokens += prompt_len
        self._kick()
        return call

    def release_embed(self, call: EmbedCall, *, cancelled: bool) -> None:
        """The Embed handler is done with `call`; `cancelled` when the client went away."""
        same_id = self._embeds.get(call.params.request_id)
        if same_id is None or call not in same_id:
            return
        same_id.remove(call)
        if not same_id:
            del self._embeds[call.params.request_id]
        self.active_requests -= 1
        self._embeds_running -= 1
        self._prefill_tokens -= call.prompt_len
        self._admitted_prompt_tokens -= call.prompt_len
        if cancelled and not call.aborted.is_set():
            self.abort_log.record("cancel", call.params.request_id)
        self._kick()

    def kv_receiving(self, request: SimRequest) -> None:
        """A PD decode's prefill handed its KV off: the transfer is under way."""
        if request.state is RequestState.AWAITING_KV:
            request.state = RequestState.RECEIVING_KV
            self._awaiting_kv -= 1
            self._receiving_kv += 1
            self._kick()

    def kv_arrived(self, request: SimRequest, first_token_ids: list[int]) -> None:
        """A PD decode's KV is here: queue it, with the prefill's first token(s) to emit."""
        if request.state is RequestState.AWAITING_KV:
            self._awaiting_kv -= 1
        elif request.state is RequestState.RECEIVING_KV:
            self._receiving_kv -= 1
        else:  # aborted or cancelled meanwhile
            return
        request.kv_ready = True
        for seq, token in zip(request.sequences, first_token_ids, strict=False):
            seq.first_token = token
        request.state = RequestState.PENDING
        self._queue(request)

    def _queue(self, request: SimRequest) -> None:
        """Hand a submitted request to the scheduler: hung (--hang) or queued for admission."""
        if not self.busy:
            # Silence counts from the moment the engine has work, not from its last output.
            self._last_output = time.monotonic()
        prompt_len = request.prompt_len
        self._prefill_tokens += prompt_len
        if self.options.hang:
            request.state = RequestState.HUNG
            self._hung += 1
            self._admitted_prompt_tokens += prompt_len
            self._kick()
            return
        cache = self.cache
        if cache.enabled:
            keys = cache.keys(request.params.prompt_ids)
            request.prompt_keys = keys
            usable = keys[: (prompt_len - 1) // cache.block_size]
            request.uncached_estimate = prompt_len - cache.cached_blocks(usable) * cache.block_size
        if request.kv_ready:
            request.uncached_estimate = 0  # its prompt was computed by the prefill
        self._pending.append(request)
        self._pending_seqs += len(request.sequences)
        self._pending_uncached += request.uncached_estimate
        self._kick()

    @property
    def busy(self) -> bool:
        """Whether the rank holds any request (queued, prefilling, decoding or hung)."""
        return bool(self._slots_used or self._hung or self._pending_seqs)

    def abort(self, request_id: str) -> int:
        """Explicit Abort RPC: ends every in-flight request with this id; returns how many."""
        requests = self._inflight.get(request_id, ())
        for request in list(requests):
            self._end_early(request)
        embeds = self._embeds.get(request_id, ())
        for call in embeds:
            call.aborted.set()
        return len(requests) + len(embeds)

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
        if previous is RequestState.AWAITING_KV:
            self._awaiting_kv -= 1
        elif previous is RequestState.RECEIVING_KV:
            self._receiving_kv -= 1
        elif previous is RequestState.PENDING:
            self._pending_seqs -= len(request.sequences)
            self._pending_uncached -= request.uncached_estimate
            self._prefill_tokens -= request.prompt_len
        else:
            if previous is not RequestState.RUNNING:  # PREFILL or HUNG: no output yet
                self._prefill_tokens -= request.prompt_len
            if previous is RequestState.HUNG:
                self._hung -= 1
            self._retire(request)
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
        while True:
            deadline = self._step(loop.time())
            if deadline is not None and deadline <= loop.time():
                # Zero-latency settings: yield once so handlers can ship what was produced.
                await asyncio.sleep(0)
            else:
                await self._sleep_until(deadline)

    def _step(self, now: float) -> float | None:
        """One scheduler pass at loop time `now`: a decode step if one is due, admissions, first
        tokens. Returns when the next pass is due (None: nothing scheduled)."""
        if self._running and now >= self._next_decode_at:
            if self._stalls_decode and now < self._prefill_free_at:
                # The forward pass is computing prefills (queued ones go first): this step
                # starts once they are done.
                held_to = self._prefill_free_at + self._step_time()
                self.decode_stalls += 1
                self.decode_stall_s += held_to - self._next_decode_at
                self._next_decode_at = held_to
            else:
                self._decode()
                self.decode_steps += 1
                self._next_decode_at = now + self._step_time()
        self._admit(now)
        self._start_ready(now)
        if self._hub is not None:
            self._publish()

        deadline: float | None = None
        if self._running:
            deadline = self._next_decode_at
        if self._prefill:
            ready = self._prefill[0][0]
            deadline = ready if deadline is None else min(deadline, ready)
        return deadline

    def _step_time(self) -> float:
        """Seconds one decode step of the current batch takes."""
        return self._itl_base + self._itl_per_running * len(self._running)

    def _prefill_ready_at(self, now: float, uncached_tokens: int) -> float:
        """When a prefill of `uncached_tokens` admitted at `now` is done, TTFT base included."""
        opts = self.options
        # Prefill time is proportional to the tokens the cache did not hold.
        prefill = opts.prefill_ms_per_1k / 1_000_000.0 * uncached_tokens
        ttft_base = opts.ttft_base_ms / 1000.0
        if opts.serial_prefill or self._stalls_decode:
            # The engine's prefill compute is one resource: wait for the ones before.
            done = max(now, self._prefill_free_at) + prefill
            self._prefill_free_at = done
            return done + ttft_base
        return now + prefill + ttft_base

    def _admit(self, now: float) -> None:
        opts = self.options
        pending = self._pending
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
            self._pending_uncached -= request.uncached_estimate
            self._slots_used += n
            self._admitted_prompt_tokens += request.prompt_len
            cached = self.cache.lookup(request.params.prompt_ids, request.prompt_keys)
            request.cached_tokens = cached
            if request.kv_ready:
                # A PD decode: the prefill computed its KV and sampled its first token already.
                request.ready_at = now
            else:
                request.ready_at = self._prefill_ready_at(now, request.prompt_len - cached)
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
            self._prefill_tokens -= request.prompt_len
            # Prompt blocks become reusable once prefill has computed them.
            self.cache.insert(request.params.prompt_ids, request.prompt_keys)
            self._last_output = time.monotonic()
            for seq in request.sequences:
                if seq.finish_reason is not None:  # a sibling's injected fault ended it
                    continue
                if seq.max_tokens <= 0:
                    self._finish(seq, "length")
                    continue
                self.total_generated += 1
                self._live_generated += 1
                if self._advance(seq):
                    self._running.append(seq)
            # The first token goes out at once whatever --tokens-per-message says: it is the TTFT.
            request.wake.set()
        if was_idle and self._running:
            self._next_decode_at = now + self._itl_base

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
        self._live_generated += produced
        if produced:
            self._last_output = time.monotonic()
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
            if position == 0 and seq.first_token is not None:
                # A PD decode emits what its prefill sampled (the same walk under one --seed).
                token = seq.first_token
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
        self._retire(request)
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
        self._retire(request)
        for seq in request.sequences:
            if seq.finish_reason is None:
                seq.finish_reason = "error"
                self._slots_used -= 1
        request.wake.set()
        self._kick()

    def _retire(self, request: SimRequest) -> None:
        """An admitted request ended: its tokens no longer occupy the KV cache."""
        self._admitted_prompt_tokens -= request.prompt_len
        self._live_generated -= request.generated_tokens

    def _remember(self, request: SimRequest) -> None:
        # Output blocks stay cached too, which is what makes a follow-up chat turn hit.
        cache = self.cache
        if not cache.enabled:
            return
        prompt = request.params.prompt_ids
        prompt_keys = request.prompt_keys
        for seq in request.sequences:
            if seq.output:
                tokens = prompt + seq.output
                # The prompt's full blocks are hashed already; chain the rest on from them.
                keys = prompt_keys + cache.keys(
                    tokens,
                    start_block=len(prompt_keys),
                    parent=prompt_keys[-1] if prompt_keys else ROOT_KEY,
                )
                cache.insert(tokens, keys)

    def _publish(self) -> None:
        """Hand this step's cache changes to the hub as one batch, or flag a load change."""
        hub = self._hub
        assert hub is not None
        cache = self.cache
        events = cache.events
        signature = (
            self._slots_used + self._hung + self._embeds_running,
            self._pending_seqs + self._awaiting_kv + self._receiving_kv,
            self._pending_uncached,
        )
        if events:
            cache.events = []
            hub.publish(self.rank, events)  # the batch carries the rank's load
        elif signature != self._load_signature and hub.subscribed:
            # An admission served from cache, a completion: the load moved without a KV event.
            hub.load_changed(self.rank)
        self._load_signature = signature

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
        silence_ms = None
        if self.busy:
            silence_ms = int((time.monotonic() - self._last_output) * 1000)
        return LoadSnapshot(
            dp_rank=self.rank,
            running=self._slots_used + self._hung + self._embeds_running,
            # SGLang counts a decode's KV prealloc and transfer queues as waiting.
            waiting=self._pending_seqs + self._awaiting_kv + self._receiving_kv,
            waiting_uncached_tokens=self._pending_uncached,
            used_tokens=self._admitted_prompt_tokens + self._live_generated,
            capacity_tokens=self.cache.capacity_tokens,
            cache_hit_rate=self.cache.hit_rate,
            gen_throughput=self.gen_throughput(),
            max_running=self.options.max_num_seqs,
            prefill_pending_tokens=self._prefill_tokens,
            silence_ms=silence_ms,
            disaggregation=DisaggregationLoad(
                mode="null" if self.options.role == "regular" else self.options.role,
                rooms_held=self.rooms_held,
                awaiting_kv=self._awaiting_kv,
                receiving_kv=self._receiving_kv,
                kv_transfer_speed_gb_s=self.kv_transfer_gb_s,
                kv_transfer_latency_ms=self.kv_transfer_ms,
            ),
        )

    def flush_cache(self) -> None:
        """Drop every cached block (FlushCache); the next step publishes the clear."""
        self.cache.clear()
        self._kick()
