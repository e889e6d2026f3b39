"""Which prefill and decode workers may pair, and the bootstrap rooms of SGLang's dual dispatch."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herdsman.engines.base import ModelInfo
from herdsman.engines.disaggregated import bootstrap_room
from herdsman.routing import Worker
from herdsman.routing.pairing import (
    bootstrap_port,
    incompatibility,
    pairing_info,
    prefill_host,
)


@dataclass
class _Engine:
    """Only what pairing reads of an engine client: its protocol."""

    backend: str
    address: str = "127.0.0.1:1"


def worker(role: str, backend: str = "vllm", port: int | None = 8998, **stated: str) -> Worker:
    return Worker(
        url=f"grpc://127.0.0.1:{len(stated) + 1}",
        engine=_Engine(backend),  # type: ignore[arg-type]
        model=ModelInfo(),
        role=role,
        bootstrap_port=port if role == "prefill" else None,
        pairing=dict(stated),
    )


def test_vllm_server_info_is_read() -> None:
    info = {
        "kv_cache_dtype": "auto",
        "block_size": 16,
        "attention_backend": "",
        "model_dtype": "torch.bfloat16",
        "pairing_protocol": "",
        "kv_role": "kv_producer",
    }
    assert pairing_info(info) == {
        "kv_cache_dtype": "auto",
        "block_size": "16",
        "model_dtype": "torch.bfloat16",
    }
    # block_size 0: not resolved yet, states nothing.
    assert "block_size" not in pairing_info({"block_size": 0})


def test_sglang_server_args_are_read() -> None:
    # protobuf Struct numbers arrive as floats.
    info = {
        "server_args": {
            "kv_cache_dtype": "fp8_e5m2",
            "page_size": 64.0,
            "attention_backend": "flashinfer",
            "dtype": "bfloat16",
            "disaggregation_bootstrap_port": 8998.0,
        }
    }
    assert pairing_info(info) == {
        "kv_cache_dtype": "fp8_e5m2",
        "block_size": "64",
        "attention_backend": "flashinfer",
        "model_dtype": "bfloat16",
    }
    assert bootstrap_port(info) == 8998
    assert bootstrap_port({"server_args": {}}) is None
    assert bootstrap_port({}) is None


@pytest.mark.parametrize(
    ("prefill", "decode", "reason"),
    [
        ({"block_size": "16"}, {"block_size": "16"}, None),
        ({"block_size": "16"}, {"block_size": "32"}, "block_size differs: prefill 16, decode 32"),
        ({"kv_cache_dtype": "fp8"}, {"kv_cache_dtype": "auto"}, "kv_cache_dtype differs"),
        ({"model_dtype": "torch.float16"}, {"model_dtype": "torch.bfloat16"}, "model_dtype"),
        ({"attention_backend": "FLASH_ATTN"}, {"attention_backend": "TRITON"}, "attention"),
        ({"pairing_protocol": "v1"}, {"pairing_protocol": "v2"}, "pairing_protocol"),
        # A factor only one side states is not held against the pair.
        ({"pairing_protocol": "v1"}, {}, None),
        ({}, {"attention_backend": "TRITON"}, None),
    ],
)
def test_incompatibility(
    prefill: dict[str, str], decode: dict[str, str], reason: str | None
) -> None:
    found = incompatibility(worker("prefill", **prefill), worker("decode", **decode))
    if reason is None:
        assert found is None
    else:
        assert found is not None and found.startswith(reason), found


def test_protocols_and_bootstrap_ports() -> None:
    assert "protocols differ" in str(
        incompatibility(worker("prefill", "sglang"), worker("decode", "vllm"))
    )
    no_port = worker("prefill", "sglang", port=None)
    assert "bootstrap port" in str(incompatibility(no_port, worker("decode", "sglang")))
    # vLLM's handoff names its own side channel: no bootstrap port needed.
    assert incompatibility(worker("prefill", "vllm", port=None), worker("decode", "vllm")) is None


@given(
    bits=st.integers(0, 2**64 - 1),
    dp_size=st.integers(1, 64),
    data=st.data(),
)
def test_a_room_routes_a_data_parallel_prefill_to_the_chosen_rank(
    bits: int, dp_size: int, data: st.DataObject
) -> None:
    rank = data.draw(st.integers(0, dp_size - 1))
    room = bootstrap_room(bits, dp_size, rank)
    assert 0 <= room <= 2**31 - 1  # SGLang's bootstrap_room is an int32
    assert room % dp_size == rank  # SGLang's follow_bootstrap_room


def test_rooms_without_data_parallelism() -> None:
    assert bootstrap_room(2**40 + 5, 1, None) == 5
    assert bootstrap_room(7, 4, None) == 7


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("grpc://10.0.0.7:30000", "10.0.0.7"),
        ("grpc://prefill-0.svc:50051", "prefill-0.svc"),
        ("grpcs://[fd00::1]:443", "fd00::1"),
        ("grpc://localhost", "localhost"),
    ],
)
def test_prefill_host(url: str, host: str) -> None:
    assert prefill_host(url) == host
