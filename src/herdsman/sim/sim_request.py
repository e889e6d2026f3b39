"""A Generate call as the simulated engine sees it, independent of the wire protocol."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True, slots=True)
class PrefillHandoff:
    """A PD prefill: its KV is held under `room` until a decode fetches it."""

    # The registry key: SGLang's bootstrap room, vLLM's request id.
    room: str
    # How errors name it: "bootstrap room 42", "request abc".
    label: str


@dataclass(frozen=True, slots=True)
class DecodeHandoff:
    """A PD decode: its KV is fetched from the prefill's handoff server at host:port."""

    host: str
    port: int
    room: str
    label: str
    # SGLang dispatches the decode alongside the prefill, so a room the prefill has not registered
    # yet is waited for; vLLM's decode comes after the prefill answered, so it is an error.
    wait_unknown: bool
    # The blocks the prefill said it holds (vLLM's remote_block_ids), checked at the fetch.
    block_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int | None
    min_tokens: int
    stop_token_ids: frozenset[int]
    ignore_eos: bool
    n: int
    stream: bool
    # None: not requested. 0: the sampled token's logprob only. k > 0: also k alternatives.
    logprobs: int | None
    seed: int | None
    # Logprobs of the prompt's tokens with this many alternatives; None: not requested.
    prompt_logprobs: int | None = None
    # The DP rank the request is pinned to; None lets the engine pick one.
    data_parallel_rank: int | None = None
    # PD disaggregation (--role prefill/decode); None for a regular request.
    handoff: PrefillHandoff | DecodeHandoff | None = None


@dataclass(frozen=True, slots=True)
class EmbedParams:
    """An Embed call as the pooling model sees it (sim/pooling.py)."""

    request_id: str
    input_ids: list[int]
    # BERT segment ids (SGLang only); None: all segment 0.
    token_type_ids: list[int] | None = None
    data_parallel_rank: int | None = None


class EmbedCall:
    """An Embed call in flight: registered with its rank so Abort, loads and stats see it."""

    __slots__ = ("aborted", "params", "prompt_len", "rank", "ready_at")

    def __init__(self, params: EmbedParams, rank: int, ready_at: float) -> None:
        self.params = params
        self.prompt_len = len(params.input_ids)
        self.rank = rank
        # Event-loop time at which its forward pass is done (the timing model's TTFT).
        self.ready_at = ready_at
        # Set by an Abort RPC naming it.
        self.aborted = asyncio.Event()


class RequestState(Enum):
    AWAITING_KV = "awaiting_kv"  # a PD decode whose prefill has not handed its KV off yet
    RECEIVING_KV = "receiving_kv"  # a PD decode whose KV is being transferred
    PENDING = "pending"  # queued behind --max-num-seqs
    PREFILL = "prefill"  # admitted, first token not produced yet
    RUNNING = "running"
    HUNG = "hung"  # --hang: accepted and never scheduled
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"  # --fail-after-tokens fired


class SimSequence:
    """One of the n outputs of a request."""

    __slots__ = (
        "complete_sent",
        "cursor",
        "eos_at",
        "finish_reason",
        "first_token",
        "flushed",
        "hung",
        "index",
        "matched_token_id",
        "max_tokens",
        "output",
        "request",
        "stopped_by_eos",
    )

    def __init__(
        self, request: SimRequest, index: int, cursor: int, max_tokens: int, eos_at: int
    ) -> None:
        self.request = request
        self.index = index
        self.cursor = cursor
        self.max_tokens = max_tokens
        # Output position at which --eos-after forces an EOS id; -1 when it never does.
        self.eos_at = eos_at
        # A PD decode's first token, sampled by the prefill and handed over with the KV.
        self.first_token: int | None = None
        self.output: list[int] = []
        # Tokens already handed to the Generate handler.
        self.flushed = 0
        self.finish_reason: str | None = None
        self.matched_token_id: int | None = None
        self.stopped_by_eos = False
        self.complete_sent = False
        # --hang-after-tokens fired: its tokens are flushed, then nothing more comes.
        self.hung = False


class SimRequest:
    __slots__ = (
        "cached_tokens",
        "exit_now",
        "first_write_ns",
        "handoff_params",
        "kv_ready",
        "logprob_key",
        "params",
        "prompt_keys",
        "prompt_len",
        "prompt_logprobs_sent",
        "rank",
        "ready_at",
        "sequences",
        "state",
        "uncached_estimate",
        "wake",
    )

    def __init__(self, params: GenerationParams, key: int) -> None:
        self.params = params
        self.sequences: list[SimSequence] = []
        self.prompt_len = len(params.prompt_ids)
        self.cached_tokens = 0
        # Prefix-cache keys of the prompt's full blocks, computed once at submission.
        self.prompt_keys: list[int] = []
        # Prompt tokens the cache did not hold at submission: the queued work it adds.
        self.uncached_estimate = self.prompt_len
        # The DP rank serving it.
        self.rank = 0
        self.ready_at = 0.0
        self.state = RequestState.PENDING
        self.logprob_key = key
        # Set by the scheduler whenever the handler has something to send or the request ended.
        self.wake = asyncio.Event()
        self.exit_now = False
        # A PD decode whose KV arrived: no prefill to simulate, its first token comes at once.
        self.kv_ready = False
        # What a PD prefill's completion tells the decode (vLLM's kv_transfer_params).
        self.handoff_params: dict[str, Any] | None = None
        # Some choice's chunk has carried the prompt's logprobs (--prompt-logprobs-once).
        self.prompt_logprobs_sent = False
        # Wall clock of the handler's first write (--timing-log; 0: nothing written yet).
        self.first_write_ns = 0

    @property
    def done(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.ABORTED, RequestState.FAILED)

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.output) for s in self.sequences)
