"""/v1/score, /v1/rerank and /v1/classify: by cosine for an embedding model, through the model's
head for a cross-encoder and a classifier (SGLang's Embed, with the pair's token types)."""

from __future__ import annotations

import itertools
import math

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from herdsman.sim.pooling import classify_logits, embed_values
from herdsman.tokenizer import ModelTokenizer

from .conftest import DIM, EMBED, SEED, Fleet

QUERY = "what is the capital of the country"
DOCS = ["the river runs to the sea", "the city is the capital", "music and art"]


def post(fleet: Fleet, path: str, body: dict) -> httpx.Response:
    return httpx.post(fleet.url + path, json=body, timeout=30)


def embedding(bert: ModelTokenizer, text: str) -> np.ndarray:
    return np.array(embed_values(bert.encode(text, add_special_tokens=True), dim=DIM, seed=SEED))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cross_score(query: str, doc: str) -> float:
    """What a cross-encoder scores: the pair as transformers encodes it (ids and token types),
    its one logit through a sigmoid."""
    pair = Tokenizer.from_file(str(EMBED / "tokenizer.json")).encode(query, doc)
    assert set(pair.type_ids) == {0, 1}
    logit = classify_logits(pair.ids, pair.type_ids, num_labels=1, dim=DIM, seed=SEED)[0]
    return 1 / (1 + math.exp(-logit))


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_an_embedding_model_scores_by_cosine(fleet: Fleet, bert: ModelTokenizer, path: str) -> None:
    body = post(fleet, path, {"model": "embed", "text_1": QUERY, "text_2": DOCS}).json()
    q = embedding(bert, QUERY)
    want = [cosine(q, embedding(bert, d)) for d in DOCS]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert np.allclose([d["score"] for d in body["data"]], want, atol=1e-6)
    # Each text counted once, as vLLM counts.
    tokens = sum(len(bert.encode(t, add_special_tokens=True)) for t in [QUERY, *DOCS])
    assert body["usage"]["prompt_tokens"] == tokens


def test_score_shapes(fleet: Fleet, bert: ModelTokenizer) -> None:
    pairs = post(
        fleet, "/v1/score", {"model": "embed", "queries": DOCS[:2], "documents": DOCS[1:]}
    ).json()
    want = [cosine(embedding(bert, a), embedding(bert, b)) for a, b in itertools.pairwise(DOCS)]
    assert np.allclose([d["score"] for d in pairs["data"]], want, atol=1e-6)
    for first, second in (("data_1", "data_2"), ("queries", "items")):
        same = post(
            fleet, "/v1/score", {"model": "embed", first: DOCS[:2], second: DOCS[1:]}
        ).json()
        assert [d["score"] for d in same["data"]] == [d["score"] for d in pairs["data"]]
    bad = post(fleet, "/v1/score", {"model": "embed", "text_1": DOCS[:2], "text_2": DOCS})
    assert bad.status_code == 400 and "1:1, 1:N or N:N" in bad.json()["error"]["message"]
    empty = post(fleet, "/v1/score", {"model": "embed", "text_1": QUERY, "text_2": []})
    assert empty.status_code == 400


def test_a_cross_encoder_scores_the_pair_with_its_token_types(fleet: Fleet) -> None:
    body = post(fleet, "/v1/score", {"model": "rerank", "text_1": QUERY, "text_2": DOCS}).json()
    assert np.allclose([d["score"] for d in body["data"]], [cross_score(QUERY, d) for d in DOCS])


@pytest.mark.parametrize("model", ["embed", "rerank"])
@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_orders_by_relevance(
    fleet: Fleet, bert: ModelTokenizer, model: str, path: str
) -> None:
    body = post(fleet, path, {"model": model, "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    if model == "embed":
        scores = [cosine(embedding(bert, QUERY), embedding(bert, d)) for d in DOCS]
    else:
        scores = [cross_score(QUERY, d) for d in DOCS]
    best = sorted(range(3), key=lambda i: scores[i], reverse=True)[:2]
    assert [r["index"] for r in body["results"]] == best
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in best]
    assert np.allclose([r["relevance_score"] for r in body["results"]], [scores[i] for i in best])
    assert body["usage"]["total_tokens"] > 0


def test_rerank_options(fleet: Fleet) -> None:
    docs = [{"text": d} for d in DOCS]
    everything = post(
        fleet, "/v1/rerank", {"model": "rerank", "query": QUERY, "documents": docs, "top_n": 0}
    ).json()
    assert len(everything["results"]) == 3
    bare = post(
        fleet,
        "/v1/rerank",
        {"model": "rerank", "query": QUERY, "documents": DOCS, "return_documents": False},
    ).json()
    assert all(r["document"] is None for r in bare["results"])
    for body in ({"documents": []}, {"documents": DOCS, "top_n": -1}):
        response = post(fleet, "/v1/rerank", {"model": "rerank", "query": QUERY, **body})
        assert response.status_code == 400, response.text


@pytest.mark.parametrize("path", ["/v1/classify", "/classify"])
def test_classify_names_the_models_labels(fleet: Fleet, bert: ModelTokenizer, path: str) -> None:
    texts = ["a good day", "the bad news"]
    body = post(fleet, path, {"model": "classify", "input": texts}).json()
    labels = ["negative", "neutral", "positive"]
    for item, text in zip(body["data"], texts, strict=True):
        logits = classify_logits(
            bert.encode(text, add_special_tokens=True), num_labels=3, dim=DIM, seed=SEED
        )
        probs = np.exp(np.array(logits) - max(logits))
        probs /= probs.sum()
        assert np.allclose(item["probs"], probs)
        assert item["label"] == labels[int(np.argmax(probs))]
        assert item["num_classes"] == 3
    assert body["usage"]["prompt_tokens"] == sum(
        len(bert.encode(t, add_special_tokens=True)) for t in texts
    )
    ids = bert.encode(texts[0], add_special_tokens=True)
    by_ids = post(fleet, path, {"model": "classify", "input": ids}).json()
    assert by_ids["data"][0]["probs"] == body["data"][0]["probs"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "embed", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/completions", {"model": "rerank", "prompt": "x"}),
        ("/v1/responses", {"model": "classify", "input": "x"}),
        (
            "/v1/messages",
            {"model": "embed", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/generate", {"model": "embed", "text": "x"}),
        ("/v1/embeddings", {"model": "chat", "input": "x"}),
        ("/v1/embeddings", {"model": "classify", "input": "x"}),
        ("/v1/classify", {"model": "embed", "input": "x"}),
        ("/v1/score", {"model": "chat", "text_1": "a", "text_2": "b"}),
        # Three labels: not a cross-encoder.
        ("/v1/score", {"model": "classify", "text_1": "a", "text_2": "b"}),
        # vllm_engine.proto's Embed runs only the embed task: a classifier there cannot be served.
        ("/v1/classify", {"model": "classify-vllm", "input": "x"}),
    ],
)
def test_an_endpoint_the_model_cannot_serve_is_a_clear_400(
    fleet: Fleet, path: str, body: dict
) -> None:
    response = post(fleet, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and body["model"] in error["message"]
    assert post(fleet, "/v1/embeddings", {"model": "embed", "input": "ok"}).status_code == 200
