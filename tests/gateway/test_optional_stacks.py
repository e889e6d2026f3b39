"""A gateway process holds only the stacks its models and policies use.

The image processors (numpy, Pillow), the prefix index of cache-aware routing (numpy) and grpcio
are left out of the serving code a text-only gateway imports (~22 MB a process); where a model has
an image processor, a policy routes on the prefix index or the grpcio transport is chosen, the
fork server imports them once, so that the gateway processes share them (herdsman.serve.preload).
Checked from outside: which shared libraries each process has mapped (/proc/PID/maps), after it
served a request.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.conftest import MODELS, QWEN3, fork_servers, gateway_processes, start_gateway, start_sim

from herdsman.config import GatewayConfig
from herdsman.serve.preload import config_modules, model_modules

VL = MODELS / "qwen2_5_vl"
# Shared libraries that only these stacks load.
NUMPY = "_multiarray_umath"
PILLOW = "PIL/_imaging"
GRPCIO = "grpc/_cython/cygrpc"


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _serve(*extra: str, model: Path = QWEN3) -> tuple[str, str]:
    """The maps of the fork server and of the gateway process, after a chat was served."""
    sim = start_sim(model, "vllm", "--itl-base-ms", "0")
    gateway = start_gateway(
        sim.address, extra=("--model-path", str(model), "--workers", "1", *extra)
    )
    try:
        base = f"http://{gateway.address}"
        name = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        (server,) = fork_servers(gateway.process.pid)
        (process,) = gateway_processes(gateway.process.pid)
        return _mapped(server), _mapped(process)
    finally:
        gateway.stop()
        sim.stop()


def test_a_text_model_behind_round_robin_loads_no_numpy_pillow_or_grpcio() -> None:
    for maps in _serve():
        assert NUMPY not in maps
        assert PILLOW not in maps
        assert GRPCIO not in maps  # the native transport is the default


def test_the_grpcio_transport_has_grpcio_loaded_in_the_fork_server() -> None:
    server, process = _serve("--grpc-transport", "grpcio")
    assert GRPCIO in server and GRPCIO in process


def test_a_vision_model_has_its_processors_loaded_once_in_the_fork_server() -> None:
    server, process = _serve(model=VL)
    assert NUMPY in server and PILLOW in server
    assert NUMPY in process and PILLOW in process  # inherited, not imported again


def test_cache_aware_routing_has_its_index_loaded_in_the_fork_server() -> None:
    server, process = _serve("--policy", "cache_aware")
    assert NUMPY in server and NUMPY in process
    assert PILLOW not in server and PILLOW not in process


@pytest.mark.parametrize(
    ("config", "processor", "expected"),
    [
        ({"architectures": ["Qwen3ForCausalLM"]}, False, []),
        ({"architectures": ["LlavaForConditionalGeneration"]}, True, "images"),
        ({"architectures": ["BertModel"]}, False, ["numpy"]),
        ({"architectures": ["BertForSequenceClassification"]}, False, ["numpy"]),
        ({"architectures": ["GPT2LMHeadModel"]}, False, []),
        ({}, False, []),
        (None, False, []),
    ],
)
def test_model_modules_read_the_model_directory(
    tmp_path: Path, config: dict[str, object] | None, processor: bool, expected: object
) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    if processor:
        (tmp_path / "preprocessor_config.json").write_text("{}")
    found = model_modules(tmp_path)
    if expected == "images":
        assert found and all(name.startswith("herdsman.multimodal.") for name in found)
    else:
        assert found == expected


def test_config_modules_follow_the_policies_and_the_transport() -> None:
    assert config_modules(GatewayConfig(policy="power_of_two").policies(), "native") == []
    index = ["herdsman.routing.kv_index"]
    for config in (
        GatewayConfig(policy="cache_aware"),
        GatewayConfig(model_policies=["other=cache_aware"]),
        GatewayConfig(prefill_policy="cache_aware"),
        GatewayConfig(decode_policy="cache_aware"),
    ):
        assert config_modules(config.policies(), "native") == index
    assert config_modules({"round_robin"}, "grpcio") == ["herdsman.engines.transport.grpcio"]
