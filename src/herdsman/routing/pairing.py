"""Which prefill and decode workers may form a pair (disaggregated serving).

A KV handoff works only between engines that lay the cache out alike. vLLM's GetServerInfo names
what its NIXL compatibility hash is built from (KV-cache dtype, block size, attention backend,
model dtype) and an operator-set pairing protocol; SGLang's names the same things in its server
arguments. Two workers that both state a value must state the same one: an incompatible pair is
never formed, rather than left for the engines to refuse at handshake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herdsman.routing.registry import Worker

ROLES = ("regular", "prefill", "decode")

# (our name, vLLM's GetServerInfo field, SGLang's server_args key)
_FACTORS = (
    ("kv_cache_dtype", "kv_cache_dtype", "kv_cache_dtype"),
    ("block_size", "block_size", "page_size"),
    ("attention_backend", "attention_backend", "attention_backend"),
    ("model_dtype", "model_dtype", "dtype"),
    ("pairing_protocol", "pairing_protocol", "pairing_protocol"),
)
# Values that state nothing: unset, or left for the engine to resolve.
_UNSTATED = frozenset({"", "0", "None", "none", "null"})


def pairing_info(server_info: Mapping[str, object]) -> dict[str, str]:
    """The pairing factors an engine states, from its GetServerInfo (either protocol)."""
    args = server_info.get("server_args")
    sglang = args if isinstance(args, Mapping) else {}
    info: dict[str, str] = {}
    for name, vllm_key, sglang_key in _FACTORS:
        value = server_info.get(vllm_key, sglang.get(sglang_key))
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # protobuf Struct numbers are floats
        text = "" if value is None else str(value)
        if text not in _UNSTATED:
            info[name] = text
    return info


def bootstrap_port(server_info: Mapping[str, object]) -> int | None:
    """An SGLang prefill's bootstrap port, as its server arguments state it."""
    args = server_info.get("server_args")
    if not isinstance(args, Mapping):
        return None
    port = args.get("disaggregation_bootstrap_port")
    try:
        return int(port) if port not in (None, "", 0) else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def incompatibility(prefill: Worker, decode: Worker) -> str | None:
    """Why the two cannot pair, or None when they can."""
    if prefill.engine.backend != decode.engine.backend:
        return f"protocols differ: prefill {prefill.engine.backend}, decode {decode.engine.backend}"
    if prefill.engine.backend == "sglang" and prefill.bootstrap_port is None:
        return "the SGLang prefill worker states no bootstrap port (give it: --prefill URL PORT)"
    for name, _, _ in _FACTORS:
        a, b = prefill.pairing.get(name), decode.pairing.get(name)
        if a is not None and b is not None and a != b:
            return f"{name} differs: prefill {a}, decode {b}"
    return None


def prefill_host(url: str) -> str:
    """The host a decode worker reaches the prefill's bootstrap server at: the prefill
    worker's own host (as SGLang's router takes it from the worker URL)."""
    rest = url.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest.rsplit("]", 1)[-1] else rest
    return host.strip("[]")
