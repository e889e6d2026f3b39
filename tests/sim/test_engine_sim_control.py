"""Abort, cancel, metadata RPCs, tokenizer download, prefix cache and timing of engine-sim."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import common_pb2
from tokenizers import Tokenizer

from herdsman.sim.corpus import CORPUS

from .simproc import (
    BACKENDS,
    LLAMA3,
    SimFactory,
    SimProcess,
    generate_request,
    split_responses,
    take,
)

LONG = 30_000  # with 1 ms per token, far longer than any test waits


def _active(sim: SimProcess) -> int:
    return sim.stub().GetServerInfo(sim.pb.GetServerInfoRequest(), timeout=5).active_requests


def _wait_active(sim: SimProcess, expected: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (active := _active(sim)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return active


def _abort(sim: SimProcess, request_id: str) -> None:
    if sim.backend == "sglang":
        sim.stub().Abort(sim.pb.AbortRequest(request_id=request_id), timeout=5)
    else:
        sim.stub().Abort(sim.pb.AbortRequest(request_ids=[request_id]), timeout=5)


def test_abort_stops_a_running_stream(fast_sim: SimProcess) -> None:
    rid = f"abort-running-{fast_sim.backend}"
    call = fast_sim.stub().Generate(
        generate_request(fast_sim.backend, rid, [11, 22, 33], max_tokens=LONG), timeout=20
    )
    take(call, 3)
    assert _active(fast_sim) == 1
    _abort(fast_sim, rid)
    _, completes = split_responses(list(call))  # ends promptly, with status OK

    assert [c.finish_reason for c in completes] == ["abort"]
    assert 3 <= completes[0].completion_tokens < LONG
    assert len(completes[0].output_ids) == completes[0].completion_tokens
    assert fast_sim.wait_for_log_line(f"abort {rid}")
    assert f"cancel {rid}" not in fast_sim.abort_log_lines()
    assert _wait_active(fast_sim, 0) == 0


def test_client_cancel_frees_and_is_logged_as_cancel(fast_sim: SimProcess) -> None:
    rid = f"cancel-{fast_sim.backend}"
    call = fast_sim.stub().Generate(
        generate_request(fast_sim.backend, rid, [44, 55, 66], max_tokens=LONG), timeout=20
    )
    take(call, 3)
    call.cancel()
    assert fast_sim.wait_for_log_line(f"cancel {rid}")
    assert f"abort {rid}" not in fast_sim.abort_log_lines()
    assert _wait_active(fast_sim, 0) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_abort_frees_a_hung_request(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--hang", backend=backend)
    call = sim.stub().Generate(generate_request(backend, "stuck", [1, 2, 3]), timeout=20)
    assert _wait_active(sim, 1) == 1
    loads = sim.stub().GetLoads(sim.pb.GetLoadsRequest(), timeout=5)
    assert loads.loads[0].num_running_reqs == 1

    _abort(sim, "stuck")
    chunks, completes = split_responses(list(call))
    assert chunks == []
    assert [(c.finish_reason, len(c.output_ids)) for c in completes] == [("abort", 0)]
    assert sim.abort_log_lines() == ["abort stuck"]
    assert _wait_active(sim, 0) == 0


def test_cancel_frees_a_hung_request(sim_factory: SimFactory) -> None:
    sim = sim_factory("--hang")
    call = sim.stub().Generate(generate_request("vllm", "stuck", [1, 2, 3]), timeout=20)
    assert _wait_active(sim, 1) == 1
    call.cancel()
    assert sim.wait_for_log_line("cancel stuck")
    assert _wait_active(sim, 0) == 0


def test_max_num_seqs_queues_the_rest(sim_factory: SimFactory) -> None:
    sim = sim_factory("--max-num-seqs", "1", "--itl-base-ms", "1")
    first = sim.stub().Generate(generate_request("vllm", "a", [1, 2], max_tokens=LONG), timeout=20)
    take(first, 1)
    second = sim.stub().Generate(generate_request("vllm", "b", [3, 4], max_tokens=5), timeout=20)
    assert _wait_active(sim, 2) == 2
    load = sim.stub().GetLoads(sim.pb.GetLoadsRequest(), timeout=5).loads[0]
    assert (load.num_running_reqs, load.num_waiting_reqs) == (1, 1)
    assert load.num_waiting_uncached_tokens == 2

    first.cancel()
    _, completes = split_responses(list(second))
    assert [c.completion_tokens for c in completes] == [5]


def test_model_info(fast_sim: SimProcess) -> None:
    info = fast_sim.stub().GetModelInfo(fast_sim.pb.GetModelInfoRequest(), timeout=5)
    assert info.model_path.endswith("/models/qwen3")
    assert info.served_model_name == "qwen3"
    assert info.is_generation
    assert info.max_context_length == 40960
    assert info.vocab_size == 151936
    assert info.model_type == "qwen3"
    assert list(info.architectures) == ["Qwen3ForCausalLM"]
    assert list(info.eos_token_ids) == [151645, 151643]
    assert info.bos_token_id == 151643
    assert '"temperature":0.6' in info.default_sampling_params_json


def test_model_info_overrides(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "tiny-llama", "--max-model-len", "2048", model=LLAMA3)
    info = sim.stub().GetModelInfo(sim.pb.GetModelInfoRequest(), timeout=5)
    assert (info.served_model_name, info.max_context_length) == ("tiny-llama", 2048)
    assert list(info.eos_token_ids) == [128001, 128009]
    with pytest.raises(grpc.RpcError) as error:
        list(sim.stub().Generate(generate_request("vllm", "big", [9] * 2048), timeout=5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A text prompt is tokenized by the engine, and the output is prose in Llama's vocabulary.
    request = sim.pb.GenerateRequest(
        request_id="text", text="Hello", sampling_params=sim.pb.SamplingParams(max_tokens=20)
    )
    _, completes = split_responses(list(sim.stub().Generate(request, timeout=5)))
    llama = Tokenizer.from_file(str(LLAMA3 / "tokenizer.json"))
    assert completes[0].prompt_tokens == len(llama.encode("Hello").ids)
    assert llama.decode(list(completes[0].output_ids)) in CORPUS * 2


def test_server_info_and_loads(fast_sim: SimProcess) -> None:
    stub = fast_sim.stub()
    pb = fast_sim.pb
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
    assert info.server_type == f"{fast_sim.backend}-grpc"
    assert info.uptime_seconds > 0
    if fast_sim.backend == "vllm":
        assert (info.max_num_seqs, info.block_size) == (1024, 16)
    else:
        assert info.server_args["max_running_requests"] == 1024
        assert "recent_aborts" in info.scheduler_info

    call = stub.Generate(
        generate_request(fast_sim.backend, "loaded", [5] * 100, max_tokens=LONG), timeout=20
    )
    take(call, 2)
    load = stub.GetLoads(pb.GetLoadsRequest(), timeout=5).loads[0]
    assert load.num_running_reqs == 1
    assert load.num_used_tokens >= 100
    assert 0 < load.token_usage < 1
    assert load.max_running_requests == 1024
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5).active_requests == 1
    assert stub.GetLoads(pb.GetLoadsRequest(dp_rank=1), timeout=5).loads == []
    call.cancel()
    assert _wait_active(fast_sim, 0) == 0
    assert stub.GetLoads(pb.GetLoadsRequest(), timeout=5).loads[0].num_running_reqs == 0


def test_tokenizer_download(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    stub = fast_sim.stub()
    chunks = list(stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=10))
    data = b"".join(c.data for c in chunks)
    assert len(chunks) > 1
    assert [bool(c.sha256) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest()

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= names
    sample = "Gateways herd requests."
    assert tokenizer.encode(sample).ids == qwen_tokenizer.encode(sample).ids


def test_prefix_cache_reports_cached_tokens(fast_sim: SimProcess) -> None:
    prompt = [1000 + (i * 37) % 5000 for i in range(300)]
    backend = fast_sim.backend

    def run(rid: str) -> tuple[list[Any], Any]:
        request = generate_request(backend, rid, prompt, max_tokens=4)
        chunks, completes = split_responses(list(fast_sim.stub().Generate(request, timeout=10)))
        return chunks, completes[0]

    _, cold = run("cold")
    warm_chunks, warm = run("warm")
    assert cold.cached_tokens == 0
    # Whole 16-token blocks, and never the last prompt token.
    assert warm.cached_tokens == 288
    assert {c.cached_tokens for c in warm_chunks} == {288}
    load = fast_sim.stub().GetLoads(fast_sim.pb.GetLoadsRequest(), timeout=5).loads[0]
    assert load.cache_hit_rate > 0


def test_timing_model(sim_factory: SimFactory) -> None:
    sim = sim_factory(
        "--ttft-base-ms",
        "0",
        "--prefill-ms-per-1k",
        "400",
        "--itl-base-ms",
        "20",
        "--itl-per-running-ms",
        "0",
        "--tokens-per-message",
        "4",
    )
    prompt = [2000 + i % 3000 for i in range(1000)]

    def ttft_and_chunks(rid: str) -> tuple[float, list[Any]]:
        started = time.monotonic()
        call = sim.stub().Generate(generate_request("vllm", rid, prompt, max_tokens=10), timeout=10)
        first = next(call)
        ttft = time.monotonic() - started
        chunks, _ = split_responses([first, *call])
        return ttft, chunks

    cold_ttft, cold_chunks = ttft_and_chunks("cold")
    warm_ttft, _ = ttft_and_chunks("warm")
    assert cold_ttft >= 0.38  # 1000 uncached tokens at 400 ms per 1k
    assert warm_ttft < 0.2  # 992 of them cached
    # The first token goes out alone, then 4 per message; 9 more tokens at 20 ms each.
    assert [len(c.token_ids) for c in cold_chunks] == [1, 4, 4, 1]
