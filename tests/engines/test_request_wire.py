"""A GenerateRequest as sent (prompt ids packed in C, herdsman.engines._varint) parses to the
same message protobuf builds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herdsman.engines import EngineRequest, SamplingParams
from herdsman.engines.grpc_engine import Serialized
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.transport import NativeTransport
from herdsman.engines.vllm import VllmEngine

_TRANSPORT = NativeTransport("127.0.0.1:1")  # connects lazily: never, here
ENGINES = [VllmEngine("x", _TRANSPORT), SglangScheduler("x", _TRANSPORT)]


def _sent(engine: VllmEngine | SglangScheduler, request: EngineRequest) -> object:
    wire = engine._generate_wire(request)
    return engine.pb2.GenerateRequest.FromString(wire.SerializeToString())


@pytest.mark.parametrize("engine", ENGINES, ids=["vllm", "sglang"])
@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**32 - 1), max_size=3000),
    max_tokens=st.one_of(st.none(), st.integers(1, 4096)),
    # The API's range (protocol/openai.py Seed): vLLM's proto carries the seed as an int32.
    seed=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
)
def test_the_packed_request_is_the_protobuf_request(
    engine: VllmEngine | SglangScheduler, ids: list[int], max_tokens: int | None, seed: int | None
) -> None:
    sampling = SamplingParams(max_tokens=max_tokens, seed=seed, stop_token_ids=[7, 8])
    request = EngineRequest(request_id="r-1", input_ids=ids, sampling=sampling)
    assert _sent(engine, request) == engine._generate_request(request)


@pytest.mark.parametrize("engine", ENGINES, ids=["vllm", "sglang"])
def test_ids_protobuf_cannot_take_go_through_protobuf(
    engine: VllmEngine | SglangScheduler,
) -> None:
    request = EngineRequest(request_id="r", input_ids=[1, 2**32], sampling=SamplingParams())
    with pytest.raises(ValueError):
        engine._generate_wire(request)  # protobuf's own error, as before
    long_prompt = EngineRequest(
        request_id="r", input_ids=list(range(2000)), sampling=SamplingParams()
    )
    assert isinstance(engine._generate_wire(long_prompt), Serialized)
