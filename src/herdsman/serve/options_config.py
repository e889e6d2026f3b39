"""The GatewayConfig that ``herdsman serve``'s options (serve/options.py) make, and the checks
that stop a bad configuration before any process starts."""

from __future__ import annotations

import argparse

from herdsman.access.cors import parse_origins
from herdsman.access.keys import checked_keys_file
from herdsman.config import GatewayConfig
from herdsman.mcp import McpConfigError, load_mcp_config
from herdsman.storage import open_store


def _storage_url(url: str | None) -> str | None:
    """--storage checked here, so a bad URL stops the gateway before any process starts."""
    if url is not None:
        try:
            open_store(url)
        except ValueError as exc:
            raise SystemExit(f"--storage: {exc}") from None
    return url


def _mcp_config(path: str | None) -> str | None:
    """--mcp-config read and checked here, so a bad file stops the gateway at once."""
    if path is not None:
        try:
            load_mcp_config(path)
        except McpConfigError as exc:
            raise SystemExit(f"--mcp-config: {exc}") from None
    return path


def _worker_roles(args: argparse.Namespace) -> dict[str, tuple[str, int | None]]:
    """--prefill URL [PORT] and --decode URL, as roles by URL."""
    roles: dict[str, tuple[str, int | None]] = {}
    for values in args.prefill:
        if len(values) > 2:
            raise SystemExit(f"--prefill takes URL [BOOTSTRAP_PORT], not {' '.join(values)}")
        port: int | None = None
        if len(values) == 2 and values[1].lower() not in ("none", ""):
            try:
                port = int(values[1])
            except ValueError:
                raise SystemExit(
                    f"--prefill {values[0]}: bad bootstrap port {values[1]!r}"
                ) from None
        roles[values[0]] = ("prefill", port)
    for url in args.decode:
        if url in roles:
            raise SystemExit(f"{url} is given as both a prefill and a decode worker")
        roles[url] = ("decode", None)
    return roles


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's configuration from parsed ``herdsman serve`` options; a bad --storage URL,
    --mcp-config file or keys file stops it here, before any process starts."""
    roles = _worker_roles(args)
    return GatewayConfig(
        workers=list(args.workers) + [url for url in roles if url not in args.workers],
        worker_roles=roles,
        prefill_policy=args.prefill_policy,
        decode_policy=args.decode_policy,
        pd_fallback=args.pd_fallback,
        storage=_storage_url(args.storage),
        mcp_config=_mcp_config(args.mcp_config),
        allow_private_mcp_urls=args.allow_private_mcp_urls,
        kv_transfer_timeout=args.kv_transfer_timeout,
        host=args.host,
        port=args.port,
        backend=args.backend,
        grpc_transport=args.grpc_transport,
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        served_model_name=args.served_model_name,
        chat_template=args.chat_template,
        tokenizer_cache=args.tokenizer_cache,
        tokenizer_cache_l0_bytes=args.tokenizer_cache_l0_bytes,
        tokenizer_cache_l1_bytes=args.tokenizer_cache_l1_bytes,
        tokenizer_cache_shared_bytes=args.tokenizer_cache_shared_bytes,
        policy=args.policy,
        model_policies=list(args.model_policies),
        prefix_hash_tokens=args.prefix_hash_tokens,
        cache_aware_balance_abs=args.cache_aware_balance_abs,
        cache_aware_balance_rel=args.cache_aware_balance_rel,
        cache_aware_prefill_weight=args.cache_aware_prefill_weight,
        kv_index_max_blocks=args.kv_index_max_blocks,
        worker_wait_timeout=args.worker_wait_timeout,
        worker_startup_timeout=args.worker_startup_timeout,
        allow_private_image_urls=args.allow_private_image_urls,
        image_url_domains=args.image_url_domains,
        max_image_bytes=args.max_image_bytes,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        health_check_interval=args.health_check_interval,
        health_check_timeout=args.health_check_timeout,
        drain_timeout=args.drain_timeout,
        warm_spare=args.warm_spare,
        start_method=args.start_method,
        watchdog_timeout=args.watchdog_timeout,
        log_level=args.log_level,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        max_url_bytes=args.max_url_bytes,
        max_connections=args.max_connections,
        max_pipelined_requests=args.max_pipelined_requests,
        http_header_timeout=args.http_header_timeout,
        http_body_timeout=args.http_body_timeout,
        keepalive_timeout=args.keepalive_timeout,
        http_send_timeout=args.http_send_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        access_log=args.access_log,
        request_timeout=args.request_timeout,
        engine_connect_timeout=args.engine_connect_timeout,
        engine_keepalive_interval=args.engine_keepalive_interval,
        engine_keepalive_timeout=args.engine_keepalive_timeout,
        engine_max_message_bytes=args.engine_max_message_bytes,
        engine_ca=args.engine_ca,
        engine_cert=args.engine_cert,
        engine_key=args.engine_key,
        max_retries=0 if args.disable_retries else args.max_retries,
        retry_initial_backoff=args.retry_initial_backoff,
        retry_max_backoff=args.retry_max_backoff,
        retry_backoff_multiplier=args.retry_backoff_multiplier,
        retry_jitter=args.retry_jitter,
        cb_enabled=not args.disable_circuit_breaker,
        cb_failure_threshold=args.cb_failure_threshold,
        cb_success_threshold=args.cb_success_threshold,
        cb_timeout=args.cb_timeout,
        cb_window=args.cb_window,
        cb_failure_rate=args.cb_failure_rate,
        cb_min_requests=args.cb_min_requests,
        max_concurrent_requests=args.max_concurrent_requests,
        queue_size=args.queue_size,
        queue_timeout=args.queue_timeout,
        max_prompt_tokens_in_flight=args.max_prompt_tokens_in_flight,
        max_choices_per_request=args.max_choices_per_request,
        max_images_per_request=args.max_images_per_request,
        image_fetch_timeout=args.image_fetch_timeout,
        service_discovery=args.service_discovery,
        discovery_selector=args.discovery_selector,
        discovery_namespace=args.discovery_namespace,
        discovery_port=args.discovery_port,
        prefill_selector=args.prefill_selector,
        decode_selector=args.decode_selector,
        discovery_kubeconfig=args.discovery_kubeconfig,
        state_url=args.state_url,
        api_keys=list(args.api_keys),
        api_keys_file=checked_keys_file(args.api_keys_file),
        admin_api_key=args.admin_api_key,
        metrics_api_key=args.metrics_api_key,
        rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_tpm=args.rate_limit_tpm,
        rate_limit_concurrent=args.rate_limit_concurrent,
        cors_allowed_origins=parse_origins(args.cors_allowed_origins),
        otlp_endpoint=args.otlp_endpoint,
        otlp_sample_ratio=args.otlp_sample_ratio,
    )
