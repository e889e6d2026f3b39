"""Gateway configuration, as the CLI (and later env and files) produce it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class GatewayConfig:
    workers: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    grpc_transport: str = "native"
    model_path: str | None = None
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    chat_template: str | None = None
    tokenizer_cache: str = "auto"  # auto | on | off
    tokenizer_cache_l0_bytes: int = 64 * 1024 * 1024
    tokenizer_cache_l1_bytes: int = 128 * 1024 * 1024
    tokenizer_cache_shared_bytes: int = 256 * 1024 * 1024
    # Image inputs: fetching is refused for private/loopback/metadata addresses unless allowed.
    allow_private_image_urls: bool = False
    image_url_domains: list[str] | None = None
    max_image_bytes: int = 20 * 1024 * 1024
    policy: str = "round_robin"
    # MODEL=POLICY overrides of the policy per model.
    model_policies: list[str] = field(default_factory=list)
    prefix_hash_tokens: int = 256
    cache_aware_balance_abs: float = 4.0
    cache_aware_balance_rel: float = 1.25
    # cache_aware: how much a worker's queued prefill counts against its cached prefix.
    cache_aware_prefill_weight: float = 0.0
    # cache_aware: (worker, block) pairs the prefix index of one model keeps (~220 bytes each).
    kv_index_max_blocks: int = 262_144
    # Disaggregated serving: the role of each worker URL that is not regular, with an SGLang
    # prefill's bootstrap port (None: as the engine states it).
    worker_roles: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    # Policies choosing a pair's prefill and decode (None: the model's policy).
    prefill_policy: str | None = None
    decode_policy: str | None = None
    # Regular workers of a disaggregated model serve its requests while no pair can.
    pd_fallback: bool = False
    # The Responses/Conversations store's URL ("none": nothing kept; None: the default SQLite).
    storage: str | None = None
    # MCP servers the gateway may call (a JSON file), and whether request-named ones may be
    # private addresses.
    mcp_config: str | None = None
    allow_private_mcp_urls: bool = False
    # Seconds a decode may wait for the prompt's KV once its prefill is done.
    kv_transfer_timeout: float = 60.0
    # Seconds a request waits for a worker of its model when none is available.
    worker_wait_timeout: float = 30.0
    # Seconds the gateway waits at start for its first worker to answer (an engine loading).
    worker_startup_timeout: float = 1800.0
    reasoning_parser: str = "auto"  # a registry name, "auto" (from the model), or "none"
    tool_call_parser: str = "auto"
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    drain_timeout: float = 25.0
    warm_spare: bool = False
    # How gateway processes start: forked by a fork server holding the tokenizers (shared),
    # spawned, each loading its own, or "inline": one gateway in the supervisor's own process.
    start_method: str = "forkserver"
    log_level: str = "info"

    # HTTP server (per gateway process).
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 16 * 1024
    max_connections: int = 4096
    max_pipelined_requests: int = 16
    http_header_timeout: float = 30.0
    http_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    http_send_timeout: float = 60.0
    tls_cert: str | None = None
    tls_key: str | None = None
    access_log: bool = False

    # Engine connections.
    request_timeout: float = 1800.0
    engine_connect_timeout: float = 10.0
    engine_keepalive_interval: float = 20.0
    engine_keepalive_timeout: float = 10.0
    engine_max_message_bytes: int = 256 * 1024 * 1024
    engine_ca: str | None = None
    engine_cert: str | None = None
    engine_key: str | None = None

    # Failures: retries before the first token reaches the client, per-worker circuit breakers.
    max_retries: int = 3
    retry_initial_backoff: float = 0.05
    retry_max_backoff: float = 2.0
    retry_backoff_multiplier: float = 1.5
    retry_jitter: float = 0.2
    cb_enabled: bool = True
    cb_failure_threshold: int = 10
    cb_success_threshold: int = 3
    cb_timeout: float = 60.0
    cb_window: float = 120.0
    cb_failure_rate: float = 0.5
    cb_min_requests: int = 20

    # Admission: concurrency (0: no limit, gateway-wide), its queue, and per-request limits.
    max_concurrent_requests: int = 0
    queue_size: int = 100
    queue_timeout: float = 60.0
    max_prompt_tokens_in_flight: int = 4_000_000
    max_choices_per_request: int = 256
    max_images_per_request: int = 8
    image_fetch_timeout: float = 30.0

    # Supervisor: a process whose event loop does not answer for this long is replaced (0: off).
    watchdog_timeout: float = 30.0
    # Number of gateway processes (set by the CLI; the admission board has one slot each).
    processes: int = 1
    # Where the gateway processes leave their metric snapshots (made by the supervisor).
    metrics_dir: str | None = None
    # The engine workers the supervisor knows now (set by it before starting each process).
    worker_specs: list[Any] = field(default_factory=list)
    # The file where every process publishes its requests in flight (made by the supervisor).
    admission_board: str | None = None
    # Where the processes' shared tokenizer segment store lives (made by the supervisor).
    tokenizer_cache_dir: str | None = None

    # Kubernetes and several replicas (herdsman.discovery): workers from the pods of a label
    # selector, watched by the supervisor; the worker list shared by replicas through Redis.
    service_discovery: bool = False
    discovery_selector: str = ""
    discovery_namespace: str = "default"
    discovery_port: str = "50051"
    prefill_selector: str = ""
    decode_selector: str = ""
    discovery_kubeconfig: str | None = None
    state_url: str | None = None

    # Auth, per-key limits and CORS (herdsman.access). Client keys from --api-key and the keys
    # file; the admin and metrics keys guard /workers and /metrics; per-key limits default to
    # these (0: unlimited), shared through state_url when set; allowed CORS origins ("*": any).
    api_keys: list[str] = field(default_factory=list)
    api_keys_file: str | None = None
    admin_api_key: str | None = None
    metrics_api_key: str | None = None
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    rate_limit_concurrent: int = 0
    cors_allowed_origins: list[str] = field(default_factory=list)

    # Tracing (herdsman.observability.tracing): OTLP/HTTP base URL (None: the standard
    # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT env vars; neither: off) and the sampled fraction of
    # new traces (None: OTEL_TRACES_SAMPLER/_ARG, default all; a client's sampled flag wins).
    otlp_endpoint: str | None = None
    otlp_sample_ratio: float | None = None

    def policies(self) -> set[str]:
        """Every routing policy this configuration names: the default, the per-model ones and
        the prefill and decode ones."""
        named = {self.policy, self.prefill_policy, self.decode_policy}
        named |= {item.partition("=")[2] for item in self.model_policies}
        return {policy for policy in named if policy}
