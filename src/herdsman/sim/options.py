"""Settings of one engine-sim process, decoupled from argparse so tests can build them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["vllm", "sglang"]
# Prefill/decode disaggregation: a prefill hands each request's KV to the decode that asks for it.
Role = Literal["regular", "prefill", "decode"]
# A pooling model served through Embed (see sim/pooling.py) instead of a generation model.
Pooling = Literal["embed", "classify"]
# The pooling model's defaults, and the architecture it reports for each task.
DEFAULT_EMBEDDING_DIM = 64
DEFAULT_NUM_LABELS = 2
ARCHITECTURES: dict[Pooling, str] = {
    "embed": "BertModel",
    "classify": "BertForSequenceClassification",
}


@dataclass(frozen=True, slots=True)
class SimOptions:
    model_path: Path
    backend: Backend = "vllm"
    host: str = "127.0.0.1"
    port: int = 50051
    seed: int = 0
    served_model_name: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 1024
    default_max_tokens: int = 256
    # Timing model, in milliseconds.
    ttft_base_ms: float = 5.0
    prefill_ms_per_1k: float = 20.0
    itl_base_ms: float = 10.0
    itl_per_running_ms: float = 0.02
    tokens_per_message: int = 1
    cache_blocks: int = 65536
    block_size: int = 16
    # Prefills share the engine's compute: each waits for the ones admitted before it.
    serial_prefill: bool = False
    # No chunked prefill: prefills are serial and hold the forward pass, so decode steps due
    # while one is computed wait until the queued prefills are done (implies serial_prefill).
    prefill_stalls_decode: bool = False
    # Data parallelism: independent schedulers (running set, queue, prefix cache) in one process.
    data_parallel_size: int = 1
    # KV events on SubscribeKvEvents: history length in batches, idle heartbeat period.
    kv_events: bool = True
    kv_history: int = 4096
    kv_heartbeat_ms: float = 1000.0
    # Behaviour and fault injection.
    eos_after: int | None = None
    # Every request answers exactly this text, then EOS: for testing output parsers end to end.
    response_text: str | None = None
    # ... except requests whose prompt ends in a tool result, which answer this text, then EOS
    # (a tool call, then an answer to the tool's output: an agent's two turns).
    response_text_after_tool: str | None = None
    fail_after_tokens: int | None = None
    exit_after_tokens: int | None = None
    hang: bool = False
    reject_new: bool = False
    # Stream this many tokens per sequence, then produce nothing more (the stream stays open).
    hang_after_tokens: int | None = None
    # Fail Generate calls with RESOURCE_EXHAUSTED: all of them (busy), or this fraction, drawn
    # from a generator seeded with --seed (the same calls in the same order get the same fate).
    busy: bool = False
    busy_fraction: float = 0.0
    # Prompt logprobs with a request's first chunk only (see ProtoWire.prompt_logprobs_once).
    prompt_logprobs_once: bool = False
    abort_log: Path | None = None
    # Appended '<request id> <traceparent>' per Generate/Embed call (the gateway's trace context).
    trace_log: Path | None = None
    # Appended per Generate call as it ends: arrival and first write (wall ns), prompt, cached.
    timing_log: Path | None = None
    # Cumulative counters written here as JSON on SIGUSR1 and at exit (see sim/stats_file.py).
    stats_file: Path | None = None
    # Server: TLS (PEM files; a client CA makes client certificates required), periodic GOAWAY
    # (grpc's max connection age and its grace), streams per connection.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_connection_age_ms: int | None = None
    max_connection_age_grace_ms: int | None = None
    max_concurrent_streams: int | None = None
    # PD disaggregation (see sim/disagg.py). The prefill's handoff server listens on
    # (host, bootstrap_port); 0 picks a free port (reported by GetServerInfo and the listening
    # line).
    role: Role = "regular"
    bootstrap_port: int | None = None
    kv_transfer_ms_per_1k: float = 5.0
    kv_transfer_timeout_ms: float = 30000.0
    drop_kv: bool = False
    # What a prefill and a decode must agree on to pair (reported by GetServerInfo). The model
    # dtype defaults to the model's config ("torch.bfloat16" when it names none).
    kv_cache_dtype: str = "auto"
    attention_backend: str = ""
    model_dtype: str | None = None
    pairing_protocol: str = ""
    # Pooling models (sim/pooling.py): None serves a generation model. The architecture
    # GetModelInfo reports (default: the pooling model's, else config.json's); the embedding
    # length (a classifier's hidden size); a classifier's label count and id2label JSON object
    # (None: from each other, else 2 labels LABEL_i).
    pooling: Pooling | None = None
    architecture: str | None = None
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    num_labels: int | None = None
    id2label: str | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> SimOptions:
        return cls(
            model_path=Path(args.model_path),
            backend=args.backend,
            host=args.host,
            port=args.port,
            seed=args.seed,
            served_model_name=args.served_model_name,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            default_max_tokens=args.default_max_tokens,
            ttft_base_ms=args.ttft_base_ms,
            prefill_ms_per_1k=args.prefill_ms_per_1k,
            itl_base_ms=args.itl_base_ms,
            itl_per_running_ms=args.itl_per_running_ms,
            tokens_per_message=args.tokens_per_message,
            cache_blocks=args.cache_blocks,
            block_size=args.block_size,
            serial_prefill=args.serial_prefill,
            prefill_stalls_decode=args.prefill_stalls_decode,
            data_parallel_size=args.data_parallel_size,
            kv_events=not args.no_kv_events,
            kv_history=args.kv_history,
            kv_heartbeat_ms=args.kv_heartbeat_ms,
            eos_after=args.eos_after,
            response_text=args.response_text,
            response_text_after_tool=args.response_text_after_tool,
            fail_after_tokens=args.fail_after_tokens,
            exit_after_tokens=args.exit_after_tokens,
            hang=args.hang,
            reject_new=args.reject_new,
            hang_after_tokens=args.hang_after_tokens,
            busy=args.busy,
            busy_fraction=args.busy_fraction,
            prompt_logprobs_once=args.prompt_logprobs_once,
            abort_log=Path(args.abort_log) if args.abort_log else None,
            trace_log=Path(args.trace_log) if args.trace_log else None,
            timing_log=Path(args.timing_log) if args.timing_log else None,
            stats_file=Path(args.stats_file) if args.stats_file else None,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
            max_connection_age_ms=args.max_connection_age_ms,
            max_connection_age_grace_ms=args.max_connection_age_grace_ms,
            max_concurrent_streams=args.max_concurrent_streams,
            role=args.role,
            bootstrap_port=args.bootstrap_port,
            kv_transfer_ms_per_1k=args.kv_transfer_ms_per_1k,
            kv_transfer_timeout_ms=args.kv_transfer_timeout_ms,
            drop_kv=args.drop_kv,
            kv_cache_dtype=args.kv_cache_dtype,
            attention_backend=args.attention_backend,
            model_dtype=args.model_dtype,
            pairing_protocol=args.pairing_protocol,
            pooling=args.pooling,
            architecture=args.architecture,
            embedding_dim=args.embedding_dim,
            num_labels=args.num_labels,
            id2label=args.id2label,
        )
