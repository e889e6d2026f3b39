"""engine-sim's pooling models (--pooling embed|classify) over the Embed RPC of both protocols."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from tokenizers import Tokenizer

from herdsman.sim.options import SimOptions
from herdsman.sim.pooling import (
    DEFAULT_EMBEDDING_DIM,
    PoolingModel,
    classify_logits,
    embed_values,
)
from herdsman.sim.server import options_problem

from .simproc import (
    BACKENDS,
    FAST_TIMING,
    QWEN3,
    SimFactory,
    SimProcess,
    generate_request,
    proto,
    start_sim,
)

SEED = 7
MAX_LEN = 64
TEXT = "Embeddings map text to vectors."


@pytest.fixture(scope="module", params=BACKENDS)
def embed_sim(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimProcess]:
    """An embedding model per backend, shared by the tests of this module."""
    backend: str = request.param
    log = tmp_path_factory.mktemp(f"embed-{backend}") / "aborts.log"
    flags = ("--pooling", "embed", "--seed", str(SEED), "--max-model-len", str(MAX_LEN))
    sim = start_sim(*FAST_TIMING, *flags, backend=backend, abort_log=log)
    yield sim
    sim.stop()


def _request(
    backend: str,
    request_id: str,
    ids: Sequence[int] | None,
    token_type_ids: Sequence[int] | None = None,
    data_parallel_rank: int = 0,
) -> Any:
    pb = proto(backend)
    message = pb.EmbedRequest(request_id=request_id)
    if ids is not None:
        message.tokenized.CopyFrom(pb.TokenizedInput(input_ids=ids))
    if token_type_ids is not None:
        message.token_type_ids.extend(token_type_ids)
    if data_parallel_rank:
        message.data_parallel_rank = data_parallel_rank
    return message


def _embed(sim: SimProcess, ids: Sequence[int] | None, **fields: Any) -> Any:
    return sim.stub().Embed(_request(sim.backend, "e", ids, **fields), timeout=10)


def _embed_error(sim: SimProcess, ids: Sequence[int] | None, **fields: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        _embed(sim, ids, **fields)
    return error.value


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _model_info(sim: SimProcess) -> Any:
    return sim.stub().GetModelInfo(sim.pb.GetModelInfoRequest(), timeout=5)


def _active(sim: SimProcess) -> int:
    return sim.stub().GetServerInfo(sim.pb.GetServerInfoRequest(), timeout=5).active_requests


def _wait_active(sim: SimProcess, expected: int, timeout: float = 10.0) -> int:
    """Ask the sim until it reports `expected` calls in flight (each ask is a round trip)."""
    deadline = time.monotonic() + timeout
    while (active := _active(sim)) != expected and time.monotonic() < deadline:
        pass
    return active


def _abort(sim: SimProcess, request_id: str) -> None:
    if sim.backend == "sglang":
        sim.stub().Abort(sim.pb.AbortRequest(request_id=request_id), timeout=5)
    else:
        sim.stub().Abort(sim.pb.AbortRequest(request_ids=[request_id]), timeout=5)


# ---- model info --------------------------------------------------------------------------------


def test_embedding_model_info(embed_sim: SimProcess) -> None:
    info = _model_info(embed_sim)
    assert not info.is_generation
    assert list(info.architectures) == ["BertModel"]
    assert info.max_context_length == MAX_LEN
    if embed_sim.backend == "sglang":
        assert (info.num_labels, info.id2label_json) == (0, "")
        assert info.max_req_input_len == MAX_LEN - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_model_info(sim_factory: SimFactory, backend: str) -> None:
    labels = {"0": "negative", "1": "neutral", "2": "positive"}
    sim = sim_factory("--pooling", "classify", "--id2label", json.dumps(labels), backend=backend)
    info = _model_info(sim)
    assert not info.is_generation
    assert list(info.architectures) == ["BertForSequenceClassification"]
    if backend == "sglang":
        assert info.num_labels == 3
        assert json.loads(info.id2label_json) == labels


def test_classifier_default_labels_and_architecture_override(sim_factory: SimFactory) -> None:
    architecture = "XLMRobertaForSequenceClassification"
    sim = sim_factory("--pooling", "classify", "--architecture", architecture, backend="sglang")
    info = _model_info(sim)
    assert list(info.architectures) == [architecture]
    assert info.num_labels == 2
    assert json.loads(info.id2label_json) == {"0": "LABEL_0", "1": "LABEL_1"}


def test_generation_model_is_unchanged(sim_factory: SimFactory) -> None:
    info = _model_info(sim_factory(backend="sglang"))
    assert info.is_generation
    assert list(info.architectures) == ["Qwen3ForCausalLM"]
    assert (info.num_labels, info.id2label_json) == (0, "")


# ---- Embed results -----------------------------------------------------------------------------


def test_embedding_equals_the_reference(embed_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    ids = qwen_tokenizer.encode(TEXT).ids
    response = _embed(embed_sim, ids)
    values = list(response.embedding)
    assert values == embed_values(ids, None, DEFAULT_EMBEDDING_DIM, SEED)
    assert (response.embedding_dim, response.prompt_tokens) == (DEFAULT_EMBEDDING_DIM, len(ids))
    assert math.isclose(_dot(values, values), 1.0, abs_tol=1e-5)


def test_embedding_is_deterministic_and_depends_on_the_ids(
    embed_sim: SimProcess, qwen_tokenizer: Tokenizer
) -> None:
    ids = qwen_tokenizer.encode(TEXT).ids
    first = list(_embed(embed_sim, ids).embedding)
    assert list(_embed(embed_sim, ids).embedding) == first
    # Order matters (positions), and another text lands elsewhere.
    assert list(_embed(embed_sim, ids[::-1]).embedding) != first
    other = list(_embed(embed_sim, qwen_tokenizer.encode("A cat sat on the mat.").ids).embedding)
    assert _dot(first, other) < 0.9


def test_embedding_takes_the_whole_context(embed_sim: SimProcess) -> None:
    longest = MAX_LEN - 1 if embed_sim.backend == "sglang" else MAX_LEN
    ids = list(range(1000, 1000 + longest))
    assert list(_embed(embed_sim, ids).embedding) == embed_values(ids, None, 64, SEED)


def test_token_types_change_the_sglang_embedding(sim_factory: SimFactory) -> None:
    sim = sim_factory("--pooling", "embed", "--seed", str(SEED), backend="sglang")
    ids = [101, 2000, 2001, 102, 3000, 3001, 102]
    pair = [0, 0, 0, 0, 1, 1, 1]
    plain = list(_embed(sim, ids).embedding)
    typed = list(_embed(sim, ids, token_type_ids=pair).embedding)
    assert typed != plain
    assert typed == embed_values(ids, pair, DEFAULT_EMBEDDING_DIM, SEED)
    # Segment 0 throughout is what no token types mean (as in BERT).
    assert list(_embed(sim, ids, token_type_ids=[0] * len(ids)).embedding) == plain


def test_embedding_dim_and_seed(sim_factory: SimFactory) -> None:
    sim = sim_factory("--pooling", "embed", "--embedding-dim", "384", "--seed", "3")
    response = _embed(sim, [5, 6, 7])
    assert response.embedding_dim == 384
    assert list(response.embedding) == embed_values([5, 6, 7], None, 384, 3)
    assert list(response.embedding) != embed_values([5, 6, 7], None, 384, SEED)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_returns_raw_logits(
    sim_factory: SimFactory, backend: str, qwen_tokenizer: Tokenizer
) -> None:
    sim = sim_factory("--pooling", "classify", "--num-labels", "3", "--seed", "5", backend=backend)
    ids = qwen_tokenizer.encode(TEXT).ids
    response = _embed(sim, ids)
    logits = list(response.embedding)
    assert logits == classify_logits(ids, None, 3, DEFAULT_EMBEDDING_DIM, 5)
    assert (response.embedding_dim, response.prompt_tokens) == (3, len(ids))
    # Not probabilities: no softmax was applied.
    assert not (all(0.0 <= v <= 1.0 for v in logits) and math.isclose(sum(logits), 1.0))


def test_prefill_time_follows_the_input_length(sim_factory: SimFactory) -> None:
    sim = sim_factory(
        "--pooling", "embed", "--ttft-base-ms", "0", "--prefill-ms-per-1k", "4000"
    )  # 4 ms per token
    started = time.monotonic()
    _embed(sim, list(range(100, 150)))
    assert time.monotonic() - started >= 0.19  # 50 tokens: 200 ms


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("no-tokenized", "carries no tokenized input"),
        ("empty", "the input is empty"),
        ("out-of-vocab", "is out of vocabulary"),
        ("too-long", "longer than the model's maximum input length"),
    ],
)
def test_invalid_inputs(embed_sim: SimProcess, case: str, detail: str) -> None:
    vocab_size = _model_info(embed_sim).vocab_size
    ids = {
        "no-tokenized": None,
        "empty": [],
        "out-of-vocab": [1, vocab_size, 2],
        "too-long": list(range(1000, 1000 + MAX_LEN + 1)),
    }[case]
    error = _embed_error(embed_sim, ids)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (error.details() or "")


def test_sglang_context_length_is_not_an_input_length(sim_factory: SimFactory) -> None:
    sim = sim_factory("--pooling", "embed", "--max-model-len", str(MAX_LEN), backend="sglang")
    error = _embed_error(sim, list(range(1000, 1000 + MAX_LEN)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"token_type_ids": [0, 1]}, "token_type_ids has 2 entries for 3 input ids"),
        ({"token_type_ids": [0, 2, 0]}, "token type id 2 is out of range"),
        ({"data_parallel_rank": 3}, "data_parallel_rank 3 is out of range"),
    ],
)
def test_invalid_sglang_fields(
    sim_factory: SimFactory, fields: dict[str, Any], detail: str
) -> None:
    sim = sim_factory("--pooling", "embed", backend="sglang")
    error = _embed_error(sim, [1, 2, 3], **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (error.details() or "")


def test_a_pooling_model_cannot_generate(embed_sim: SimProcess) -> None:
    request = generate_request(embed_sim.backend, "g", [1, 2, 3], max_tokens=4)
    with pytest.raises(grpc.RpcError) as error:
        list(embed_sim.stub().Generate(request, timeout=5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "this model does not support generation"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_generation_model_cannot_embed(sim_factory: SimFactory, backend: str) -> None:
    error = _embed_error(sim_factory(*FAST_TIMING, backend=backend), [1, 2, 3])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "this model does not support embeddings"


@pytest.mark.parametrize(
    ("flag", "code"),
    [("--busy", grpc.StatusCode.RESOURCE_EXHAUSTED), ("--reject-new", grpc.StatusCode.UNAVAILABLE)],
)
def test_fault_flags_apply_to_embed(
    sim_factory: SimFactory, flag: str, code: grpc.StatusCode
) -> None:
    sim = sim_factory("--pooling", "embed", flag)
    assert _embed_error(sim, [1, 2, 3]).code() == code


# ---- abort, cancel, accounting -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_abort_ends_a_hung_embed(sim_factory: SimFactory, backend: str) -> None:
    sim = sim_factory("--pooling", "embed", "--hang", backend=backend)
    future = sim.stub().Embed.future(_request(backend, "stuck", [1, 2, 3]), timeout=20)
    assert _wait_active(sim, 1) == 1
    assert sim.stub().GetLoads(sim.pb.GetLoadsRequest(), timeout=5).loads[0].num_running_reqs == 1
    _abort(sim, "stuck")
    error = future.exception(timeout=10)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.ABORTED
    assert _wait_active(sim, 0) == 0
    assert sim.abort_log_lines() == ["abort stuck"]


def test_cancel_frees_a_hung_embed(sim_factory: SimFactory) -> None:
    sim = sim_factory("--pooling", "embed", "--hang", backend="sglang")
    future = sim.stub().Embed.future(_request("sglang", "gone", [1, 2, 3]), timeout=20)
    assert _wait_active(sim, 1) == 1
    assert future.cancel()
    assert sim.wait_for_log_line("cancel gone")
    assert _wait_active(sim, 0) == 0


def test_stats_file_counts_embed_calls(sim_factory: SimFactory, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    sim = sim_factory(*FAST_TIMING, "--pooling", "embed", "--stats-file", str(path))
    for ids in ([1, 2, 3], [4, 5, 6, 7]):
        _embed(sim, ids)
    assert sim.stop() == 0
    (rank,) = json.loads(path.read_text())["ranks"]
    assert (rank["requests"], rank["embed_requests"], rank["embed_prompt_tokens"]) == (2, 2, 7)


# ---- settings (in process) ---------------------------------------------------------------------


def _options(**fields: Any) -> SimOptions:
    return dataclasses.replace(SimOptions(model_path=QWEN3), **fields)


def test_classifier_label_settings() -> None:
    model = PoolingModel.from_options(_options(pooling="classify", num_labels=4))
    assert model is not None
    assert model.labels == ("LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3")
    labels = '{"1": "yes", "0": "no"}'
    model = PoolingModel.from_options(_options(pooling="classify", id2label=labels))
    assert model is not None
    assert (model.labels, model.num_labels) == (("no", "yes"), 2)
    assert PoolingModel.from_options(_options()) is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"num_labels": 3}, "need --pooling classify"),
        ({"pooling": "embed", "id2label": '{"0": "a"}'}, "need --pooling classify"),
        ({"pooling": "classify", "id2label": "{"}, "not valid JSON"),
        ({"pooling": "classify", "id2label": '{"0": "a", "2": "b"}'}, "class indices 0..1"),
        ({"pooling": "classify", "num_labels": 3, "id2label": '{"0": "a"}'}, "disagrees"),
    ],
)
def test_bad_label_settings_stop_the_sim(fields: dict[str, Any], problem: str) -> None:
    assert problem in (options_problem(_options(**fields)) or "")


def test_reference_values_are_unit_length_and_typed() -> None:
    values = embed_values([3, 1, 4, 1, 5, 9, 2, 6], None, 128, 0)
    assert len(values) == 128
    assert all(isinstance(v, float) for v in values)
    assert math.isclose(_dot(values, values), 1.0, abs_tol=1e-5)
    with pytest.raises(ValueError):
        embed_values([], None, 64, 0)
