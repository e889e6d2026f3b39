"""Fault injection and process lifecycle of engine-sim."""

from __future__ import annotations

import grpc
import pytest

from .simproc import BACKENDS, SimFactory, generate_request, split_responses


@pytest.mark.parametrize("backend", BACKENDS)
def test_fail_after_tokens(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--fail-after-tokens", "5", "--itl-base-ms", "1", backend=backend)
    received = []
    call = sim.stub().Generate(generate_request(backend, "f", [1, 2], max_tokens=50), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        for response in call:
            received.append(response)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    chunks, completes = split_responses(received)
    assert completes == []
    assert sum(len(c.token_ids) for c in chunks) == 5
    # The sim itself stays up and serves the next request the same way.
    assert sim.stub().HealthCheck(sim.pb.HealthCheckRequest(), timeout=5).healthy


@pytest.mark.parametrize("backend", BACKENDS)
def test_reject_new(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--reject-new", backend=backend)
    health = sim.stub().HealthCheck(sim.pb.HealthCheckRequest(), timeout=5)
    assert not health.healthy
    with pytest.raises(grpc.RpcError) as error:
        list(sim.stub().Generate(generate_request(backend, "r", [1, 2]), timeout=5))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_exit_after_tokens_kills_the_process(sim_factory: SimFactory) -> None:
    sim = sim_factory("--exit-after-tokens", "4", "--itl-base-ms", "1")
    received = []
    call = sim.stub().Generate(generate_request("vllm", "x", [1, 2], max_tokens=50), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        for response in call:
            received.append(response)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    chunks, completes = split_responses(received)
    assert completes == []
    assert sum(len(c.token_ids) for c in chunks) <= 4
    assert sim.process.wait(timeout=5) == 3


def test_healthy_by_default_and_sigterm_is_graceful(sim_factory: SimFactory) -> None:
    sim = sim_factory(backend="sglang")
    assert sim.listening_line == f"engine-sim listening on 127.0.0.1:{sim.port} backend=sglang"
    assert sim.stub().HealthCheck(sim.pb.HealthCheckRequest(), timeout=5).healthy
    assert sim.stop() == 0


def test_unimplemented_rpcs_say_so(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    with pytest.raises(grpc.RpcError) as error:
        sim.stub().Embed(sim.pb.EmbedRequest(request_id="e"), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_empty_prompt_is_invalid(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    with pytest.raises(grpc.RpcError) as error:
        list(sim.stub().Generate(generate_request("vllm", "empty", []), timeout=5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
