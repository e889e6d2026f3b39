"""Fault injection and process lifecycle of engine-sim."""

from __future__ import annotations

import grpc
import pytest
from smg_grpc_proto.generated import common_pb2

from .simproc import BACKENDS, SimFactory, SimProcess, generate_request, split_responses


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
        sim.stub().StartProfile(common_pb2.StartProfileRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_empty_prompt_is_invalid(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    with pytest.raises(grpc.RpcError) as error:
        list(sim.stub().Generate(generate_request("vllm", "empty", []), timeout=5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("backend", BACKENDS)
def test_hang_after_tokens_keeps_the_stream_open(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--hang-after-tokens", "3", "--itl-base-ms", "1", backend=backend)
    received = []
    call = sim.stub().Generate(generate_request(backend, "h", [1, 2], max_tokens=50), timeout=1)
    with pytest.raises(grpc.RpcError) as error:
        for response in call:
            received.append(response)
    # Three tokens, then silence until the client's deadline ends the call.
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    chunks, completes = split_responses(received)
    assert completes == []
    assert sum(len(c.token_ids) for c in chunks) == 3
    assert sim.wait_for_log_line("cancel h")


def test_hung_stream_ends_on_abort(sim_factory: SimFactory) -> None:
    sim = sim_factory("--hang-after-tokens", "2", "--tokens-per-message", "8")
    call = sim.stub().Generate(generate_request("vllm", "ha", [1, 2], max_tokens=50), timeout=10)
    first = next(call)
    # --tokens-per-message does not hold back the tokens produced before the hang.
    assert len(first.chunk.token_ids) + len(next(call).chunk.token_ids) == 2
    sim.stub().Abort(sim.pb.AbortRequest(request_ids=["ha"]), timeout=5)
    rest = list(call)
    assert [r.complete.finish_reason for r in rest] == ["abort"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_busy_is_resource_exhausted_and_healthy(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--busy", backend=backend)
    with pytest.raises(grpc.RpcError) as error:
        list(sim.stub().Generate(generate_request(backend, "b", [1, 2]), timeout=5))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sim.stub().HealthCheck(sim.pb.HealthCheckRequest(), timeout=5).healthy


def _busy_pattern(sim: SimProcess, calls: int) -> list[bool]:
    stub = sim.stub()
    pattern = []
    for i in range(calls):
        try:
            list(stub.Generate(generate_request("vllm", f"s{i}", [1, 2], max_tokens=1), timeout=5))
            pattern.append(False)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            pattern.append(True)
    return pattern


def test_busy_fraction_is_deterministic_from_the_seed(sim_factory: SimFactory) -> None:
    flags = ("--busy-fraction", "0.5", "--itl-base-ms", "0", "--ttft-base-ms", "0")
    first = _busy_pattern(sim_factory(*flags, "--seed", "11"), 40)
    again = _busy_pattern(sim_factory(*flags, "--seed", "11"), 40)
    other = _busy_pattern(sim_factory(*flags, "--seed", "12"), 40)
    assert first == again
    assert first != other
    assert 5 < sum(first) < 35
