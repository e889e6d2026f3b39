"""Command-line entry points of `herdsman engine-sim` (wired into the main CLI by the lead)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from herdsman.sim.options import (
    ARCHITECTURES,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_NUM_LABELS,
    SimOptions,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and server")
    model.add_argument(
        "--model-path",
        required=True,
        metavar="DIR",
        help="model directory: tokenizer.json (required), tokenizer_config.json, config.json, "
        "generation_config.json",
    )
    model.add_argument("--backend", choices=("vllm", "sglang"), default="vllm")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=_non_negative_int, default=50051, help="0 picks a free port")
    model.add_argument("--served-model-name", default=None, help="default: the directory name")
    model.add_argument("--max-model-len", type=_positive_int, default=None)
    model.add_argument(
        "--max-num-seqs",
        type=_positive_int,
        default=1024,
        help="sequences decoded at once; the rest queue as waiting",
    )
    model.add_argument(
        "--default-max-tokens",
        type=_non_negative_int,
        default=256,
        help="output length when a request sets no max tokens",
    )
    model.add_argument(
        "--data-parallel-size",
        "--dp-size",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N independent DP ranks (each its own running set, queue, prefix cache, load "
        "and KV events tagged dp_rank); a request's data_parallel_rank pins it to one, the "
        "rest are spread round-robin",
    )
    model.add_argument(
        "--seed",
        type=int,
        default=0,
        help="varies which text requests get (and a --pooling model's vectors)",
    )
    model.add_argument(
        "--abort-log",
        metavar="FILE",
        default=None,
        help="append 'abort <id>' per Abort RPC id and 'cancel <id>' per client cancel",
    )
    model.add_argument(
        "--trace-log",
        metavar="FILE",
        default=None,
        help="append '<request id> <traceparent or ->' per Generate and Embed call",
    )
    model.add_argument(
        "--timing-log",
        metavar="FILE",
        default=None,
        help="append '<arrival ns> <first write ns or -> <prompt tokens> <cached tokens>' per "
        "Generate call as it ends (wall clock): the engine's own TTFT, beside a client's",
    )
    model.add_argument(
        "--stats-file",
        metavar="FILE",
        default=None,
        help="write cumulative counters per rank (requests, prompt and cached tokens, generated "
        "tokens) as JSON to FILE on SIGUSR1 and at exit",
    )
    model.add_argument("--log-level", default="WARNING")

    pooling = parser.add_argument_group("pooling models (the Embed RPC)")
    pooling.add_argument(
        "--pooling",
        choices=("embed", "classify"),
        default=None,
        help="serve a pooling model through Embed instead of a generation model (Generate then "
        "fails with INVALID_ARGUMENT; GetModelInfo says is_generation false). embed: an "
        "L2-normalised mean-pooled embedding of --embedding-dim values "
        f"({ARCHITECTURES['embed']}); classify: a classifier's raw logits, one per label, with "
        "no softmax or sigmoid applied (the client picks the activation) "
        f"({ARCHITECTURES['classify']}). Values are a deterministic function of the input ids "
        "(and SGLang's token_type_ids) and --seed: herdsman.sim.pooling.embed_values / "
        "classify_logits compute them",
    )
    pooling.add_argument(
        "--architecture",
        default=None,
        metavar="NAME",
        help="the architecture GetModelInfo reports (default: the --pooling model's, else "
        "config.json's)",
    )
    pooling.add_argument(
        "--embedding-dim",
        type=_positive_int,
        default=DEFAULT_EMBEDDING_DIM,
        metavar="N",
        help="embedding length (--pooling embed); the hidden size a classifier projects to its "
        "logits (--pooling classify)",
    )
    pooling.add_argument(
        "--num-labels",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"--pooling classify: number of labels (default: --id2label's, else "
        f"{DEFAULT_NUM_LABELS})",
    )
    pooling.add_argument(
        "--id2label",
        default=None,
        metavar="JSON",
        help='--pooling classify: labels by class index, e.g. \'{"0": "negative", "1": '
        "\"positive\"}' (default: LABEL_0, LABEL_1, ...); SGLang's GetModelInfo reports them "
        "(id2label_json, num_labels), vLLM's has no such fields",
    )

    server = parser.add_argument_group("gRPC server (for connection fault tests)")
    server.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this PEM certificate")
    server.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    server.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this PEM CA (mTLS)",
    )
    server.add_argument(
        "--max-connection-age-ms",
        type=_positive_int,
        default=None,
        metavar="MS",
        help="send GOAWAY to each connection after this long (grpc.max_connection_age_ms); "
        "calls in flight then have --max-connection-age-grace-ms to finish",
    )
    server.add_argument(
        "--max-connection-age-grace-ms",
        type=_non_negative_int,
        default=None,
        metavar="MS",
        help="grace after a max-age GOAWAY before the connection is closed (default: unlimited)",
    )
    server.add_argument(
        "--max-concurrent-streams",
        type=_positive_int,
        default=None,
        metavar="N",
        help="SETTINGS_MAX_CONCURRENT_STREAMS: calls per connection at once",
    )

    timing = parser.add_argument_group("timing model (all 0: as fast as possible)")
    timing.add_argument("--ttft-base-ms", type=_non_negative_float, default=5.0)
    timing.add_argument(
        "--prefill-ms-per-1k",
        type=_non_negative_float,
        default=20.0,
        help="added TTFT per 1000 prompt tokens not served from the prefix cache",
    )
    timing.add_argument("--itl-base-ms", type=_non_negative_float, default=10.0)
    timing.add_argument(
        "--itl-per-running-ms",
        type=_non_negative_float,
        default=0.02,
        help="added inter-token latency per running sequence",
    )
    timing.add_argument(
        "--tokens-per-message",
        type=_positive_int,
        default=1,
        help="tokens batched per stream chunk (the first token is always sent at once)",
    )
    timing.add_argument(
        "--serial-prefill",
        action="store_true",
        help="prefills share the engine's compute: each starts when the ones admitted before it "
        "are done (default: every prefill runs on its own clock)",
    )
    timing.add_argument(
        "--prefill-stalls-decode",
        action="store_true",
        help="an engine without chunked prefill: prefills run one at a time (as with "
        "--serial-prefill) on the same forward pass as decoding, and are scheduled first, so a "
        "decode step that falls due while prefills are being computed runs only once they are "
        "all done (one step's ITL after the last), and the running sequences see an "
        "inter-token gap as long as those prefills",
    )

    cache = parser.add_argument_group("prefix cache and KV events")
    cache.add_argument(
        "--cache-blocks",
        type=_non_negative_int,
        default=65536,
        help="prefix-cache capacity in blocks, per DP rank; least recently used blocks are "
        "evicted first (0 disables caching)",
    )
    cache.add_argument(
        "--block-size",
        type=_positive_int,
        default=16,
        metavar="TOKENS",
        help="tokens per cache block (GetServerInfo block_size / page_size, KV events)",
    )
    cache.add_argument(
        "--no-kv-events",
        action="store_true",
        help="answer SubscribeKvEvents with UNIMPLEMENTED, like vLLM without "
        "--kv-events-config (default: blocks stored/removed/cleared are published with each "
        "rank's EngineLoad)",
    )
    cache.add_argument(
        "--kv-history",
        type=_positive_int,
        default=4096,
        metavar="BATCHES",
        help="KV-event batches kept for subscribers resuming from a sequence number (fewer "
        "when they hold more than twice the caches' blocks); an older cursor gets a snapshot",
    )
    cache.add_argument(
        "--kv-heartbeat-ms",
        type=_non_negative_float,
        default=1000.0,
        metavar="MS",
        help="send a load_only batch for a rank the stream has said nothing about for this "
        "long (0: only when its load changes)",
    )

    pd = parser.add_argument_group("prefill/decode disaggregation")
    pd.add_argument(
        "--role",
        choices=("regular", "prefill", "decode"),
        default="regular",
        help="prefill: prefill requests and hold their KV for a decode to fetch from the "
        "bootstrap port; decode: fetch each request's KV from the prefill its request names, "
        "then decode without prefilling (default: regular, no handoff)",
    )
    pd.add_argument(
        "--bootstrap-port",
        type=_non_negative_int,
        default=None,
        metavar="PORT",
        help="TCP port of the prefill's KV handoff server on --host (required with --role "
        "prefill; 0 picks a free port, printed on the listening line)",
    )
    pd.add_argument(
        "--kv-transfer-ms-per-1k",
        type=_non_negative_float,
        default=5.0,
        metavar="MS",
        help="simulated KV transfer time per 1000 prompt tokens, spent by the decode once the "
        "prefill is done and before its first token",
    )
    pd.add_argument(
        "--kv-transfer-timeout-ms",
        type=_positive_float,
        default=30000.0,
        metavar="MS",
        help="how long a decode waits for its KV before failing the request (ABORTED), and how "
        "long a prefill holds KV nobody fetched before freeing it",
    )
    pd.add_argument(
        "--drop-kv",
        action="store_true",
        help="fault injection: a prefill that completes prefills but never hands any KV off "
        "(the decodes waiting on it time out)",
    )
    pd.add_argument(
        "--kv-cache-dtype",
        default="auto",
        help="reported by GetServerInfo for PD pairing",
    )
    pd.add_argument(
        "--attention-backend",
        default="",
        help="reported by GetServerInfo for PD pairing",
    )
    pd.add_argument(
        "--model-dtype",
        default=None,
        metavar="DTYPE",
        help="reported by GetServerInfo for PD pairing (default: the model config's dtype, "
        "torch.bfloat16 when it names none)",
    )
    pd.add_argument(
        "--pairing-protocol",
        default="",
        help="reported by GetServerInfo: a prefill and a decode carrying one pair only when "
        "the values are equal",
    )

    faults = parser.add_argument_group("behaviour and fault injection")
    faults.add_argument(
        "--response-text",
        default=None,
        metavar="TEXT",
        help="answer every request with exactly this text, then EOS (for parser tests)",
    )
    faults.add_argument(
        "--response-text-after-tool",
        default=None,
        metavar="TEXT",
        help="with --response-text: answer this text instead, then EOS, when the prompt's last "
        "message is a tool result (nothing but the assistant's generation prompt follows its "
        "last </tool_response>, as Qwen/Hermes-style chat templates render tool results); "
        "scripts an agent's tool call and its answer to the tool's output",
    )
    parser.add_argument(
        "--eos-after",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="emit the model's EOS id as output token N+1 (unless ignore_eos)",
    )
    faults.add_argument(
        "--fail-after-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="end each Generate with status INTERNAL after N tokens",
    )
    faults.add_argument(
        "--exit-after-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="kill the whole process (exit code 3) once a request has N tokens",
    )
    faults.add_argument(
        "--hang",
        action="store_true",
        help="accept Generate and Embed calls but never produce tokens or embeddings",
    )
    faults.add_argument(
        "--reject-new",
        action="store_true",
        help="fail Generate and Embed with UNAVAILABLE and report unhealthy",
    )
    faults.add_argument(
        "--hang-after-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stream N tokens per sequence, then never produce more (the stream stays open "
        "until the client cancels, aborts or its deadline passes)",
    )
    faults.add_argument(
        "--busy",
        action="store_true",
        help="fail every Generate and Embed with RESOURCE_EXHAUSTED (still healthy: back-pressure)",
    )
    faults.add_argument(
        "--busy-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="fail this fraction of Generate and Embed calls with RESOURCE_EXHAUSTED, drawn in "
        "arrival order from a generator seeded with --seed",
    )
    faults.add_argument(
        "--prompt-logprobs-once",
        action="store_true",
        help="send a streamed request's prompt logprobs with its first chunk only, not with "
        "each choice's first chunk (what vLLM does when it coalesces several choices' outputs)",
    )


def _run_loop(options: SimOptions) -> int:
    # The simulator (numpy, tokenizers, grpc) is imported to run it, not to build the parser:
    # every herdsman command builds it, `herdsman serve` too.
    from herdsman.sim.server import serve

    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(options))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(options))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s engine-sim %(levelname)s %(name)s: %(message)s",
    )
    return _run_loop(SimOptions.from_namespace(args))
