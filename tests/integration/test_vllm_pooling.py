"""Pooling models on the real engine: embeddings, score, rerank and classify (issue 19).

Two tiny random-weight BERT models (``make_tiny_pooling.py``): an embedding model (``BertModel``,
mean pooling, L2-normalised, read from its sentence-transformers ``modules.json``) and a
cross-encoder (``BertForSequenceClassification``, one label). Three vLLM processes start at once:

- the embedding model on vLLM's gRPC servicer, herdsman in front of it (per gRPC transport);
- the same model on vLLM's OpenAI server: the reference for every answer;
- the cross-encoder on the gRPC servicer, herdsman in front of it.

What vLLM 0.32 does here (see the module's tests for the evidence):

- ``GetModelInfo`` of a pooling model: ``is_generation`` false, ``architectures`` the config's
  (``BertModel`` / ``BertForSequenceClassification``); nothing else tells embed from classify.
- ``Embed`` runs ``encode(..., PoolingParams(task="embed"))`` on the token ids it is given (no
  special tokens added): for the embedding model its vector is exactly the OpenAI server's
  ``/v1/embeddings`` one for the same ids. A sequence classifier supports only ``classify`` and
  ``token_classify``: ``Embed`` fails with INVALID_ARGUMENT ``Unsupported task: 'embed'
  Supported tasks: [...]``, and ``EmbedRequest`` has no ``token_type_ids`` either, which a BERT
  cross-encoder's pair needs. So herdsman cannot serve a cross-encoder over vLLM's gRPC servicer:
  its score, rerank and classify for one must be a clear 400.
- With the embedding model, ``/score`` and ``/rerank`` embed each text on its own and score a
  pair by the cosine similarity of the two embeddings; usage counts each distinct text once.
"""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    EAGER,
    GRPC_SERVER,
    HERE,
    OPENAI_SERVER,
    Gateway,
    VllmServer,
    _health_serving,
    engine_port,
    launch_vllm,
    openai_ready,
    start_gateway_logged,
    vllm_env,
    wait_vllm_ready,
)

EMBED_NAME = "tiny-bert-embed"
CROSS_NAME = "tiny-bert-rerank"
MAX_MODEL_LEN = 512  # BERT's max_position_embeddings
TOLERANCE = 1e-5
TIMEOUT = 120
# Keys whose values differ by request by nature.
VOLATILE = {"id", "created"}

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Berlin is in Germany.",
    "Deep neural networks learn an embedding of each sentence.",
]
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    # Words outside the vocabulary (WordPiece pieces, ##x) and accents (the normaliser strips them).
    "Zebras énumérate xylophones, 42 times!",
    "",
]


@pytest.fixture(scope="module")
def pooling_models(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``embed/`` and ``rerank/`` under one directory (fixed seed, no download)."""
    out = tmp_path_factory.mktemp("tiny-pooling")
    subprocess.run(
        [str(vllm_python), str(HERE / "make_tiny_pooling.py"), str(out), "embed", "rerank"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def pooling_argv(
    entrypoint: str, vllm_python: Path, model: Path, served_name: str, port: int
) -> list[str]:
    """A vLLM server of this module: the pooling runner, float32, eager as the whole tier (the
    outputs of the two servers are compared with each other, not with a compiled run)."""
    return [
        str(vllm_python),
        "-m",
        entrypoint,
        "--model", str(model),
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--runner", "pooling",
        "--dtype", "float32",
        *EAGER,
        "--gpu-memory-utilization", "0.2",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--seed", "0",
    ]  # fmt: skip


@dataclass
class PoolingEngines:
    embed_grpc: VllmServer  # vLLM's gRPC servicer, the embedding model
    embed_http: VllmServer  # vLLM's OpenAI server, the same model: the reference
    cross_grpc: VllmServer  # vLLM's gRPC servicer, the cross-encoder
    models: Path

    @property
    def reference(self) -> str:
        return f"http://{self.embed_http.address}"


@pytest.fixture(scope="module")
def pooling_engines(
    vllm_python: Path, pooling_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoolingEngines]:
    logs = tmp_path_factory.mktemp("vllm-pooling")
    taken: set[int] = set()

    def port() -> int:
        chosen = engine_port(taken)
        taken.add(chosen)
        return chosen

    plan = [
        ("embed-grpc", GRPC_SERVER, "embed", EMBED_NAME, "0"),
        ("embed-http", OPENAI_SERVER, "embed", EMBED_NAME, "1"),
        ("cross-grpc", GRPC_SERVER, "rerank", CROSS_NAME, "1"),
    ]
    servers: list[VllmServer] = []
    try:
        # All at once: each start is mostly one core's work; pinned (VLLM_CPU_OMP_THREADS_BIND)
        # so that two engines do not both spread over both cores.
        for name, entrypoint, model, served, core in plan:
            chosen = port()
            argv = pooling_argv(entrypoint, vllm_python, pooling_models / model, served, chosen)
            env = vllm_env(VLLM_CPU_OMP_THREADS_BIND=core)
            servers.append(launch_vllm(argv, logs / f"{name}.log", f"127.0.0.1:{chosen}", env))
        for server, (_, entrypoint, *_) in zip(servers, plan, strict=True):
            http = entrypoint == OPENAI_SERVER
            wait_vllm_ready(server, openai_ready if http else _health_serving)
        ready = (f"{p[0]} {s.startup_seconds:.1f}s" for p, s in zip(plan, servers, strict=True))
        print("pooling engines ready: " + ", ".join(ready), file=sys.stderr)
        yield PoolingEngines(servers[0], servers[1], servers[2], pooling_models)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def embed_gateway(
    pooling_engines: PoolingEngines,
    vllm_transport: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """herdsman in front of the embedding model's gRPC servicer; its base URL."""
    log = tmp_path_factory.mktemp(f"gateway-embed-{vllm_transport}") / "gateway.log"
    gateway = start_gateway_logged(
        pooling_engines.embed_grpc.address,
        log,
        "--model-path",
        str(pooling_engines.models / "embed"),
        "--grpc-transport",
        vllm_transport,
    )
    yield from _serve(gateway)


@pytest.fixture(scope="module")
def cross_gateway(
    pooling_engines: PoolingEngines, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """herdsman in front of the cross-encoder's gRPC servicer; its base URL."""
    log = tmp_path_factory.mktemp("gateway-cross") / "gateway.log"
    gateway = start_gateway_logged(
        pooling_engines.cross_grpc.address,
        log,
        "--model-path",
        str(pooling_engines.models / "rerank"),
    )
    yield from _serve(gateway)


def _serve(gateway: Gateway) -> Iterator[str]:
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()


# --- helpers --------------------------------------------------------------------------------------


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=TIMEOUT)


def ok(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = post(base, path, body)
    assert response.status_code == 200, f"{base}{path}: {response.status_code} {response.text}"
    return response.json()


def tokenize(reference: str, text: str) -> list[int]:
    """The ids vLLM's own server makes of ``text`` (special tokens added)."""
    return ok(reference, "/tokenize", {"model": EMBED_NAME, "prompt": text})["tokens"]


def floats_of_base64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def assert_same(got: Any, expected: Any, where: str = "$") -> None:
    """``got`` equals vLLM's ``expected``: the same keys (a key absent on one side and null on
    the other counts as the same), the same lists, floats within TOLERANCE; ``id`` and
    ``created`` not compared."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        for key in sorted(set(got) | set(expected)):
            if key in VOLATILE:
                continue
            if expected.get(key) is None and got.get(key) is None:
                continue
            assert key in got, f"{where}.{key} missing (vLLM: {expected[key]!r})"
            assert key in expected, f"{where}.{key} not in vLLM's answer (got {got[key]!r})"
            assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list), f"{where}: {got!r} is not a list"
        assert len(got) == len(expected), f"{where}: {len(got)} items, vLLM {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert isinstance(got, int | float), f"{where}: {got!r} is not a number"
        assert abs(got - expected) <= TOLERANCE, f"{where}: {got} != {expected}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def assert_same_answer(gateway: str, reference: str, path: str, body: dict[str, Any]) -> dict:
    expected = ok(reference, path, {"model": EMBED_NAME, **body})
    got = ok(gateway, path, {"model": EMBED_NAME, **body})
    assert_same(got, expected)
    return got


class EmbedClient:
    """vLLM's VllmEngine.Embed and GetModelInfo over grpcio, for the engine-level facts."""

    def __init__(self, address: str) -> None:
        import grpc
        from smg_grpc_proto.generated import vllm_engine_pb2 as pb2

        self.grpc = grpc
        self.pb2 = pb2
        self.channel = grpc.insecure_channel(address)
        prefix = "/vllm.grpc.engine.VllmEngine/"
        self.embed_rpc = self.channel.unary_unary(
            prefix + "Embed",
            request_serializer=pb2.EmbedRequest.SerializeToString,
            response_deserializer=pb2.EmbedResponse.FromString,
        )
        self.info_rpc = self.channel.unary_unary(
            prefix + "GetModelInfo",
            request_serializer=pb2.GetModelInfoRequest.SerializeToString,
            response_deserializer=pb2.GetModelInfoResponse.FromString,
        )
        self.counter = 0

    def embed(self, ids: list[int]):
        self.counter += 1
        request = self.pb2.EmbedRequest(
            request_id=f"pooling-test-{self.counter}",
            tokenized=self.pb2.TokenizedInput(input_ids=ids),
        )
        return self.embed_rpc(request, timeout=TIMEOUT)

    def model_info(self):
        return self.info_rpc(self.pb2.GetModelInfoRequest(), timeout=TIMEOUT)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def engine_rpc(pooling_engines: PoolingEngines) -> Iterator[tuple[EmbedClient, EmbedClient]]:
    embed = EmbedClient(pooling_engines.embed_grpc.address)
    cross = EmbedClient(pooling_engines.cross_grpc.address)
    yield embed, cross
    embed.close()
    cross.close()


# --- the engines (the premises of the gateway's tests) -------------------------------------------


def test_model_info_of_pooling_models(engine_rpc: tuple[EmbedClient, EmbedClient]) -> None:
    embed, cross = engine_rpc
    info = embed.model_info()
    assert not info.is_generation
    assert list(info.architectures) == ["BertModel"]
    assert info.served_model_name == EMBED_NAME
    assert info.max_context_length == MAX_MODEL_LEN
    info = cross.model_info()
    assert not info.is_generation
    assert list(info.architectures) == ["BertForSequenceClassification"]


def test_embed_rpc_equals_vllm_embeddings(
    pooling_engines: PoolingEngines, engine_rpc: tuple[EmbedClient, EmbedClient]
) -> None:
    """Embed on vLLM's own tokenization gives /v1/embeddings' vector, L2-normalised."""
    embed, _ = engine_rpc
    for text in TEXTS:
        ids = tokenize(pooling_engines.reference, text)
        answer = embed.embed(ids)
        expected = ok(
            pooling_engines.reference, "/v1/embeddings", {"model": EMBED_NAME, "input": text}
        )
        vector = expected["data"][0]["embedding"]
        assert answer.embedding_dim == len(vector) == 64
        assert answer.prompt_tokens == len(ids) == expected["usage"]["prompt_tokens"]
        assert max(abs(a - b) for a, b in zip(answer.embedding, vector, strict=True)) <= TOLERANCE
        assert math.isclose(math.hypot(*answer.embedding), 1.0, abs_tol=1e-5)


def test_embed_rpc_errors(engine_rpc: tuple[EmbedClient, EmbedClient]) -> None:
    embed, cross = engine_rpc
    invalid = embed.grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (embed, [], "The decoder prompt cannot be empty"),
        (embed, [5] * (MAX_MODEL_LEN + 1), "is longer than the maximum model length of 512"),
        (cross, [2, 5, 3], "Unsupported task: 'embed'"),
    ]
    for client, ids, message in cases:
        with pytest.raises(embed.grpc.RpcError) as failure:
            client.embed(ids)
        assert failure.value.code() == invalid
        assert message in failure.value.details()


def test_vllm_scores_an_embedding_model_by_cosine(pooling_engines: PoolingEngines) -> None:
    """vLLM's /score with an embedding model: the cosine similarity of the two embeddings."""
    reference = pooling_engines.reference
    vectors = ok(reference, "/v1/embeddings", {"input": [QUERY, *DOCUMENTS]})["data"]
    query = vectors[0]["embedding"]
    scores = ok(reference, "/score", {"text_1": QUERY, "text_2": DOCUMENTS})["data"]
    for item, document in zip(scores, vectors[1:], strict=True):
        cosine = sum(a * b for a, b in zip(query, document["embedding"], strict=True))
        assert abs(item["score"] - cosine) <= TOLERANCE


# --- herdsman against vLLM's OpenAI server, the embedding model -----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"input": TEXTS[0]},
        {"input": TEXTS},
        {"input": TEXTS[1], "encoding_format": "float"},
        {"input": DOCUMENTS},
        # vLLM truncates inside the tokenizer (its truncation_side, right here), special tokens
        # kept: [CLS] the quick [SEP].
        {"input": TEXTS[1], "truncate_prompt_tokens": 4},
    ],
    ids=["string", "batch", "float", "documents", "truncate"],
)
def test_embeddings_equal_vllm(
    embed_gateway: str, pooling_engines: PoolingEngines, body: dict[str, Any]
) -> None:
    assert_same_answer(embed_gateway, pooling_engines.reference, "/v1/embeddings", body)


def test_embeddings_of_token_ids_equal_vllm(
    embed_gateway: str, pooling_engines: PoolingEngines
) -> None:
    """Token ids go to the engine as they are (vLLM adds no special tokens to them)."""
    reference = pooling_engines.reference
    ids = [tokenize(reference, text) for text in TEXTS[:3]]
    for body in ({"input": ids[0]}, {"input": ids}, {"input": ids[1][1:-1]}):
        assert_same_answer(embed_gateway, reference, "/v1/embeddings", body)


def test_embeddings_base64_equal_vllm(embed_gateway: str, pooling_engines: PoolingEngines) -> None:
    """base64: the little-endian float32 bytes of each vector."""
    body = {"model": EMBED_NAME, "input": TEXTS[:3], "encoding_format": "base64"}
    expected = ok(pooling_engines.reference, "/v1/embeddings", body)
    got = ok(embed_gateway, "/v1/embeddings", body)
    for answer in (expected, got):
        for item in answer["data"]:
            assert isinstance(item["embedding"], str)
            item["embedding"] = floats_of_base64(item["embedding"])
    assert_same(got, expected)
    floats = ok(embed_gateway, "/v1/embeddings", {**body, "encoding_format": "float"})
    assert_same(got["data"], floats["data"])


@pytest.mark.parametrize(
    "body",
    [
        {"text_1": QUERY, "text_2": DOCUMENTS[1]},
        {"text_1": QUERY, "text_2": DOCUMENTS},
        {"text_1": [QUERY], "text_2": DOCUMENTS},
        {"text_1": [QUERY, "hello", "", TEXTS[2]], "text_2": DOCUMENTS},
        {"queries": QUERY, "documents": DOCUMENTS[:2]},
    ],
    ids=["str-str", "str-list", "one-list", "list-list", "queries-documents"],
)
@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_equals_vllm(
    embed_gateway: str, pooling_engines: PoolingEngines, path: str, body: dict[str, Any]
) -> None:
    assert_same_answer(embed_gateway, pooling_engines.reference, path, body)


@pytest.mark.parametrize(
    "body",
    [
        {"query": QUERY, "documents": DOCUMENTS},
        {"query": QUERY, "documents": DOCUMENTS, "top_n": 2},
        {"query": QUERY, "documents": DOCUMENTS, "top_n": 0},
        {"query": QUERY, "documents": DOCUMENTS[:2], "top_n": 10},
        {"query": "", "documents": [DOCUMENTS[0]]},
    ],
    ids=["all", "top-2", "top-0-is-all", "top-n-past-the-end", "empty-query"],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_equals_vllm(
    embed_gateway: str, pooling_engines: PoolingEngines, path: str, body: dict[str, Any]
) -> None:
    """Results best first, each with the document's index in the request, the document
    (``{"text", "multi_modal"}``) and its relevance_score; usage without completion tokens."""
    got = assert_same_answer(embed_gateway, pooling_engines.reference, path, body)
    scores = [r["relevance_score"] for r in got["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"input": "word " * MAX_MODEL_LEN}),
        ("/v1/embeddings", {"input": [5] * (MAX_MODEL_LEN + 1)}),
        ("/v1/embeddings", {"input": TEXTS[0], "dimensions": 16}),
        ("/v1/embeddings", {"input": TEXTS[0], "encoding_format": "hex"}),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}),
        ("/v1/score", {"text_1": "a", "text_2": []}),
        ("/v1/rerank", {"query": "q", "documents": []}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}),
        ("/v1/rerank", {"query": "q", "documents": ["word " * MAX_MODEL_LEN]}),
    ],
    ids=[
        "embeddings-empty-list",
        "embeddings-too-long",
        "embeddings-ids-too-long",
        "embeddings-dimensions",
        "embeddings-bad-format",
        "score-lengths-mismatch",
        "score-no-documents",
        "rerank-no-documents",
        "rerank-negative-top-n",
        "rerank-too-long",
    ],
)
def test_bad_requests_are_400_as_in_vllm(
    embed_gateway: str, pooling_engines: PoolingEngines, path: str, body: dict[str, Any]
) -> None:
    body = {"model": EMBED_NAME, **body}
    expected = post(pooling_engines.reference, path, body)
    assert expected.status_code == 400, expected.text
    got = post(embed_gateway, path, body)
    assert got.status_code == 400, got.text
    assert got.json()["error"]["message"]


# --- herdsman in front of a cross-encoder, which vLLM's gRPC servicer cannot run ------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/score", {"text_1": QUERY, "text_2": DOCUMENTS[1]}),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}),
        ("/v1/classify", {"input": DOCUMENTS[1]}),
        ("/classify", {"input": [DOCUMENTS[1]]}),
    ],
    ids=["score", "rerank", "classify", "classify-batch"],
)
def test_cross_encoder_over_grpc_is_a_clear_400(
    cross_gateway: str, path: str, body: dict[str, Any]
) -> None:
    """vLLM's servicer answers Embed only (task "embed"), which a sequence classifier does not
    support; the gateway says so with a 400, not a 500, and goes on serving."""
    for _ in range(2):
        response = post(cross_gateway, path, {"model": CROSS_NAME, **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"]
    assert httpx.get(f"{cross_gateway}/v1/models", timeout=TIMEOUT).status_code == 200
