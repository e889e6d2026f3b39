"""The options of ``herdsman serve``, in groups (their GatewayConfig: serve/options_config.py).

Apart from the CLI's entry point (herdsman.cli). Imported by the supervisor's process, so it
stays as light as the CLI (tests/unit/test_supervisor_imports.py).
"""

from __future__ import annotations

import argparse

from herdsman.routing.policies import POLICY_NAMES


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``herdsman serve``, in groups."""
    p.add_argument(
        "--worker",
        dest="workers",
        action="append",
        default=[],
        metavar="URL",
        help="engine worker, grpc://HOST:PORT (repeatable)",
    )
    p.add_argument(
        "--prefill",
        action="append",
        default=[],
        nargs="+",
        metavar=("URL", "BOOTSTRAP_PORT"),
        help="prefill worker of disaggregated serving, with the SGLang bootstrap port when the "
        "engine does not state it (repeatable)",
    )
    p.add_argument(
        "--decode",
        action="append",
        default=[],
        metavar="URL",
        help="decode worker of disaggregated serving (repeatable)",
    )
    p.add_argument(
        "--workers",
        dest="processes",
        type=int,
        default=None,
        metavar="N",
        help="gateway processes, each with its own event loop (default: the CPUs this process "
        "may use, cgroup quota included)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "vllm", "sglang"],
        help="worker protocol; auto asks the worker",
    )
    p.add_argument(
        "--grpc-transport",
        default="native",
        choices=["native", "grpcio"],
        help="gRPC client: herdsman's lean HTTP/2 client (native) or grpcio's asyncio stack",
    )
    p.add_argument("--model-path", help="local model directory (tokenizer.json, ...)")
    p.add_argument("--tokenizer-path", help="local tokenizer directory; overrides --model-path")
    p.add_argument("--served-model-name", help="model name clients use (default: the engine's)")
    p.add_argument("--chat-template", help="a Jinja chat template, or a file holding one")
    p.add_argument(
        "--tokenizer-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help="the L0/L1 tokenization cache; auto: on unless the fastokens backend encodes "
        "(it outruns the cache: see docs/benchmarks-tokenizer.md)",
    )
    p.add_argument(
        "--tokenizer-cache-l0-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="exact-prompt tokenization cache budget per process (0 disables)",
    )
    p.add_argument(
        "--tokenizer-cache-l1-bytes",
        type=int,
        default=128 * 1024 * 1024,
        help="segment tokenization cache budget per process (0 disables)",
    )
    p.add_argument(
        "--tokenizer-cache-shared-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="segment cache all gateway processes share, in /dev/shm (0 disables)",
    )
    p.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="let image URLs reach private, loopback and link-local addresses (never metadata)",
    )
    p.add_argument(
        "--image-url-domain",
        dest="image_url_domains",
        action="append",
        default=None,
        metavar="DOMAIN",
        help="only fetch images from these hosts (repeatable; '.example.com' for subdomains)",
    )
    p.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024)
    routing = p.add_argument_group("routing")
    routing.add_argument(
        "--policy",
        default="round_robin",
        choices=POLICY_NAMES,
        help="how a request picks one of its model's workers",
    )
    routing.add_argument(
        "--prefill-policy",
        choices=POLICY_NAMES,
        help="how a disaggregated request picks its prefill worker (default: --policy)",
    )
    routing.add_argument(
        "--decode-policy",
        choices=POLICY_NAMES,
        help="how a disaggregated request picks its decode worker (default: --policy)",
    )
    p.add_argument(
        "--mcp-config",
        default=None,
        metavar="FILE",
        help="MCP servers the gateway may call for /v1/responses mcp tools and /v1/messages "
        "mcp_servers (JSON: "
        '{"servers": {"LABEL": {"transport": "stdio"|"sse"|"streamable_http", ...}}})',
    )
    p.add_argument(
        "--allow-private-mcp-urls",
        action="store_true",
        help="let MCP server URLs named by requests reach private, loopback and link-local "
        "addresses (never metadata)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="where the Responses and Conversations APIs keep what they store: sqlite:///PATH, "
        "postgresql://..., redis://... (?ttl=SECONDS), or none (default: a SQLite file under "
        "$XDG_DATA_HOME/herdsman, created on first use)",
    )
    routing.add_argument(
        "--pd-fallback",
        action="store_true",
        help="regular workers of a disaggregated model serve its requests while no prefill/"
        "decode pair can",
    )
    routing.add_argument(
        "--kv-transfer-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a decode worker may wait for the prompt's KV cache once its prefill is "
        "done; then both are aborted and the request fails",
    )
    routing.add_argument(
        "--model-policy",
        dest="model_policies",
        action="append",
        default=[],
        metavar="MODEL=POLICY",
        help="a model's own policy (repeatable)",
    )
    routing.add_argument(
        "--prefix-hash-tokens",
        type=int,
        default=256,
        help="prefix_hash: the leading prompt tokens that choose the worker",
    )
    routing.add_argument(
        "--cache-aware-balance-abs",
        type=float,
        default=4.0,
        help="cache_aware: a worker takes a request for its cache only while its load is within "
        "this many requests of the least loaded worker's...",
    )
    routing.add_argument(
        "--cache-aware-balance-rel",
        type=float,
        default=1.25,
        help="...or within this factor of it",
    )
    routing.add_argument(
        "--cache-aware-prefill-weight",
        type=float,
        default=0.0,
        help="cache_aware: weight of a worker's queued prefill tokens against the prompt tokens "
        "it has cached (0: the longest cached prefix wins within the load bound)",
    )
    routing.add_argument(
        "--kv-index-max-blocks",
        type=int,
        default=262_144,
        help="cache_aware: KV blocks (per worker) the prefix index of one model keeps in each "
        "gateway process, ~220 bytes each; past it the deepest blocks of the fullest worker go",
    )
    routing.add_argument(
        "--worker-wait-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a request waits for a worker of its model when none is available",
    )
    routing.add_argument(
        "--worker-startup-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long the gateway waits at start for a worker that is still loading",
    )
    p.add_argument(
        "--reasoning-parser",
        default="auto",
        help="reasoning parser name (vLLM's or SMG's), 'auto' from the model, or 'none'",
    )
    p.add_argument(
        "--tool-call-parser",
        default="auto",
        help="tool-call parser name (vLLM's or SMG's), 'auto' from the model, or 'none'",
    )
    p.add_argument("--health-check-interval", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--health-check-timeout", type=float, default=2.0, metavar="SECONDS")
    p.add_argument(
        "--drain-timeout",
        "--shutdown-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="on SIGTERM: how long streams in flight may run before they are aborted "
        "(under Kubernetes' 30 s terminationGracePeriodSeconds)",
    )
    p.add_argument(
        "--start-method",
        choices=("forkserver", "spawn", "inline"),
        default="forkserver",
        help="how gateway processes start: forked from a fork server that loaded the tokenizers "
        "once (they share that memory), spawned, each loading its own, or inline: one process "
        "serving in the supervisor's own (the least memory; a failed gateway exits the process "
        "for its orchestrator to restart)",
    )
    p.add_argument(
        "--warm-spare",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep an idle process connected and ready to take over from one that dies (off by "
        "default: a replacement forked from the preloaded fork server serves within ~0.2 s)",
    )
    p.add_argument(
        "--watchdog-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="replace a gateway process whose event loop has not answered for this long (0: off)",
    )

    http = p.add_argument_group("HTTP server (limits are per gateway process)")
    http.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    http.add_argument("--max-header-bytes", type=int, default=64 * 1024)
    http.add_argument("--max-url-bytes", type=int, default=16 * 1024)
    http.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="open client connections per process; more are answered 503 and closed",
    )
    http.add_argument(
        "--max-pipelined-requests",
        type=int,
        default=16,
        help="requests a client may queue on one connection before reading pauses",
    )
    http.add_argument(
        "--http-header-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time a client has to send a request's line and headers",
    )
    http.add_argument(
        "--http-body-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time a client has to send a request's body once its headers arrived",
    )
    http.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        metavar="SECONDS",
        help="idle time before a keep-alive connection is closed",
    )
    http.add_argument(
        "--http-send-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="drop a client that takes none of its response for this long (its engine request "
        "is aborted)",
    )
    http.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate")
    http.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    http.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (logger herdsman.access)",
    )

    engine = p.add_argument_group("engine connections")
    engine.add_argument(
        "--request-timeout",
        "--request-timeout-secs",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="deadline of one generation at the engine; past it the client gets 504 (or an SSE "
        "error) and the engine an Abort",
    )
    engine.add_argument("--engine-connect-timeout", type=float, default=10.0, metavar="SECONDS")
    engine.add_argument(
        "--engine-keepalive-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="PING an engine connection that has calls in flight and has been silent this long",
    )
    engine.add_argument(
        "--engine-keepalive-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="an unanswered PING fails the connection's calls (UNAVAILABLE) after this long",
    )
    engine.add_argument(
        "--engine-max-message-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="largest gRPC message accepted from an engine",
    )
    engine.add_argument("--engine-ca", metavar="FILE", help="CA bundle for grpcs:// workers")
    engine.add_argument("--engine-cert", metavar="FILE", help="client certificate (mTLS)")
    engine.add_argument("--engine-key", metavar="FILE", help="client certificate's key (mTLS)")

    faults = p.add_argument_group("retries and circuit breakers (per gateway process)")
    faults.add_argument(
        "--max-retries",
        "--retry-max-retries",
        type=int,
        default=3,
        help="attempts after the first, before any token reached the client",
    )
    faults.add_argument("--disable-retries", action="store_true")
    faults.add_argument("--retry-initial-backoff", type=float, default=0.05, metavar="SECONDS")
    faults.add_argument("--retry-max-backoff", type=float, default=2.0, metavar="SECONDS")
    faults.add_argument("--retry-backoff-multiplier", type=float, default=1.5)
    faults.add_argument(
        "--retry-jitter", "--retry-jitter-factor", type=float, default=0.2, metavar="FRACTION"
    )
    faults.add_argument("--disable-circuit-breaker", action="store_true")
    faults.add_argument(
        "--cb-failure-threshold",
        type=int,
        default=10,
        help="consecutive failures that open a worker's circuit",
    )
    faults.add_argument(
        "--cb-success-threshold",
        type=int,
        default=3,
        help="successful trial requests that close a half-open circuit",
    )
    faults.add_argument(
        "--cb-timeout",
        "--cb-timeout-duration-secs",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time an open circuit waits before letting trial requests through",
    )
    faults.add_argument(
        "--cb-window",
        "--cb-window-duration-secs",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="window over which the failure rate is measured",
    )
    faults.add_argument(
        "--cb-failure-rate",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="failure rate over the window that opens the circuit (with --cb-min-requests)",
    )
    faults.add_argument("--cb-min-requests", type=int, default=20)

    limits = p.add_argument_group("admission and request limits")
    limits.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=0,
        help="generation requests in flight, gateway-wide (0: no limit); more wait in a queue",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=100,
        help="requests waiting for a slot per process; beyond it: 429",
    )
    limits.add_argument(
        "--queue-timeout",
        "--queue-timeout-secs",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait in the queue before a 429",
    )
    limits.add_argument(
        "--max-prompt-tokens-in-flight",
        type=int,
        default=4_000_000,
        help="prompt tokens of the requests in flight per process; beyond it: 429 (0: no limit)",
    )
    limits.add_argument(
        "--max-choices-per-request",
        type=int,
        default=256,
        help="prompts x n of one request",
    )
    limits.add_argument("--max-images-per-request", type=int, default=8)
    limits.add_argument(
        "--image-fetch-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time to fetch all of one request's images (fetched concurrently)",
    )
    p.add_argument(
        "--engine-sim",
        action="store_true",
        help="start a simulated engine on --model-path and serve in front of it",
    )
    p.add_argument(
        "--engine-sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the embedded engine-sim (repeatable)",
    )
    p.add_argument("--log-level", default="info")

    fleet = p.add_argument_group("Kubernetes discovery and several replicas")
    fleet.add_argument(
        "--service-discovery",
        action="store_true",
        help="add and remove workers as the pods of --selector become Ready, lose readiness "
        "or are deleted (in-cluster config, else the kubeconfig)",
    )
    fleet.add_argument(
        "--selector",
        dest="discovery_selector",
        default="",
        metavar="LABELS",
        help="label selector of the engine pods, as app=vllm,tier=gpu",
    )
    fleet.add_argument("--discovery-namespace", default="default", metavar="NAMESPACE")
    fleet.add_argument(
        "--discovery-port",
        default="50051",
        metavar="PORT",
        help="the engine's gRPC port on the pod: a number or a container port's name "
        "(the pod annotation herdsman.io/port overrides it)",
    )
    fleet.add_argument(
        "--prefill-selector",
        default="",
        metavar="LABELS",
        help="pods matching it are prefill workers (else the label herdsman.io/role decides; "
        "herdsman.io/bootstrap-port gives an SGLang prefill's bootstrap port)",
    )
    fleet.add_argument(
        "--decode-selector",
        default="",
        metavar="LABELS",
        help="pods matching it are decode workers",
    )
    fleet.add_argument(
        "--discovery-kubeconfig",
        default=None,
        metavar="FILE",
        help="kubeconfig to use outside a cluster (default: $KUBECONFIG, ~/.kube/config)",
    )
    fleet.add_argument(
        "--state-url",
        default=None,
        metavar="URL",
        help="redis://HOST:PORT/DB shared by the gateway replicas: workers added or removed "
        "through one replica's admin API are added or removed on all (per-key limits too)",
    )

    access = p.add_argument_group("auth, per-key limits and CORS (herdsman.access)")
    access.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help="a client API key (repeatable; Authorization: Bearer KEY or x-api-key: KEY); with "
        "any key configured every API route needs one (prefer --api-keys-file: argv is visible)",
    )
    access.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help="client keys: one name:key per line, or a JSON/YAML mapping name -> {key, "
        "requests_per_minute, tokens_per_minute, max_concurrent}",
    )
    access.add_argument(
        "--admin-api-key",
        metavar="KEY",
        help="the only key accepted on /workers (the fleet); client keys get 403 there",
    )
    access.add_argument(
        "--metrics-api-key", metavar="KEY", help="the key /metrics needs (default: open)"
    )
    access.add_argument(
        "--rate-limit-rpm",
        type=int,
        default=0,
        metavar="N",
        help="requests per minute per key (GCRA; 0: unlimited); the keys file may override",
    )
    access.add_argument(
        "--rate-limit-tpm",
        type=int,
        default=0,
        metavar="N",
        help="prompt + completion tokens per minute per key (0: unlimited)",
    )
    access.add_argument(
        "--rate-limit-concurrent",
        type=int,
        default=0,
        metavar="N",
        help="requests in flight per key (0: unlimited)",
    )
    access.add_argument(
        "--cors-allowed-origins",
        action="append",
        default=[],
        metavar="ORIGINS",
        help="origins browsers may call from: a comma list, or * (default: no CORS)",
    )

    tracing = p.add_argument_group("tracing (OpenTelemetry, OTLP/HTTP)")
    tracing.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="export spans to this OTLP/HTTP collector (base URL; /v1/traces is appended). "
        "Default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT; "
        "none of them: tracing off",
    )
    tracing.add_argument(
        "--otlp-sample-ratio",
        type=_sample_ratio,
        default=None,
        metavar="R",
        help="fraction of new traces sampled, 0..1 (default: $OTEL_TRACES_SAMPLER/_ARG, else "
        "all); a client's traceparent decides for its own trace",
    )


def _sample_ratio(value: str) -> float:
    ratio = float(value)
    if not 0.0 <= ratio <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return ratio
