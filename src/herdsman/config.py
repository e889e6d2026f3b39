"""Gateway configuration, as the CLI (and later env and files) produce it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    reasoning_parser: str = "auto"  # a registry name, "auto" (from the model), or "none"
    tool_call_parser: str = "auto"
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 30.0
    warm_spare: bool = True
    log_level: str = "info"
    # Where the gateway processes leave their metric snapshots (made by the supervisor).
    metrics_dir: str | None = None
    # Where the processes' shared tokenizer segment store lives (made by the supervisor).
    tokenizer_cache_dir: str | None = None
