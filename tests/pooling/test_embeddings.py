"""POST /v1/embeddings against engine-sims of both protocols: the vectors are the engine's (the
sim's reference function over the ids the model's tokenizer gives), in every input shape."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import openai
import pytest

from herdsman.sim.pooling import embed_values
from herdsman.tokenizer import ModelTokenizer

from .conftest import DIM, MAX_LEN, SEED, Fleet

TEXTS = ["the quick brown fox", "a river runs to the sea", "music and science"]


def expected(ids: list[int]) -> list[float]:
    return embed_values(ids, dim=DIM, seed=SEED)


def post(fleet: Fleet, body: dict, path: str = "/v1/embeddings") -> httpx.Response:
    return httpx.post(fleet.url + path, json={"model": "embed", **body}, timeout=30)


def test_one_text(fleet: Fleet, bert: ModelTokenizer) -> None:
    response = post(fleet, {"input": TEXTS[0]})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = bert.encode(TEXTS[0], add_special_tokens=True)
    assert ids[0] == bert.token_id("[CLS]") and ids[-1] == bert.token_id("[SEP]")
    assert body["object"] == "list" and body["model"] == "embed"
    assert body["data"] == [{"index": 0, "object": "embedding", "embedding": expected(ids)}]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == len(ids)
    assert math.isclose(float(np.linalg.norm(body["data"][0]["embedding"])), 1.0, rel_tol=1e-5)


def test_a_batch_keeps_its_order_on_both_protocols(fleet: Fleet, bert: ModelTokenizer) -> None:
    texts = [f"{TEXTS[i % 3]} {i}" for i in range(40)]
    body = post(fleet, {"input": texts}).json()
    assert [d["index"] for d in body["data"]] == list(range(40))
    all_ids = [bert.encode(t, add_special_tokens=True) for t in texts]
    assert [d["embedding"] for d in body["data"]] == [expected(ids) for ids in all_ids]
    assert body["usage"]["prompt_tokens"] == sum(map(len, all_ids))


def test_token_ids_are_sent_as_they_are(fleet: Fleet) -> None:
    one = post(fleet, {"input": [5, 141, 393]}).json()
    assert one["data"][0]["embedding"] == expected([5, 141, 393])
    many = post(fleet, {"input": [[5, 141], [393, 394, 395]]}).json()
    assert [d["embedding"] for d in many["data"]] == [expected([5, 141]), expected([393, 394, 395])]


def test_base64_is_little_endian_float32(fleet: Fleet, bert: ModelTokenizer) -> None:
    body = post(fleet, {"input": TEXTS[1], "encoding_format": "base64"}).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    values = np.frombuffer(raw, "<f4").tolist()
    assert values == expected(bert.encode(TEXTS[1], add_special_tokens=True))


def test_openai_sdk(fleet: Fleet, bert: ModelTokenizer) -> None:
    # The SDK asks for base64 by default and decodes it.
    client = openai.OpenAI(base_url=fleet.url + "/v1", api_key="none", max_retries=0)
    result = client.embeddings.create(model="embed", input=TEXTS)
    for item, text in zip(result.data, TEXTS, strict=True):
        want = expected(bert.encode(text, add_special_tokens=True))
        assert np.allclose(item.embedding, want, rtol=0, atol=1e-7)
    floats = client.embeddings.create(model="embed", input=TEXTS[0], encoding_format="float")
    assert floats.data[0].embedding == expected(bert.encode(TEXTS[0], add_special_tokens=True))


def test_truncation_keeps_special_tokens_like_the_tokenizer(
    fleet: Fleet, bert: ModelTokenizer
) -> None:
    ids = bert.encode("the quick brown fox", add_special_tokens=True)
    body = post(fleet, {"input": "the quick brown fox", "truncate_prompt_tokens": 4}).json()
    # transformers' truncation (the tokenizer's side, right): [CLS] the quick [SEP]
    assert body["data"][0]["embedding"] == expected([*ids[:3], ids[-1]])
    left = post(
        fleet,
        {"input": "the quick brown fox", "truncate_prompt_tokens": 4, "truncation_side": "left"},
    ).json()
    assert left["data"][0]["embedding"] == expected(ids[-4:])
    sliced = post(fleet, {"input": [7, 8, 9, 10, 11], "truncate_prompt_tokens": 2}).json()
    assert sliced["data"][0]["embedding"] == expected([7, 8])
    assert sliced["usage"]["prompt_tokens"] == 2


def test_without_special_tokens(fleet: Fleet, bert: ModelTokenizer) -> None:
    body = post(fleet, {"input": TEXTS[2], "add_special_tokens": False}).json()
    assert body["data"][0]["embedding"] == expected(bert.encode(TEXTS[2], add_special_tokens=False))


def test_an_empty_text_is_its_special_tokens(fleet: Fleet, bert: ModelTokenizer) -> None:
    body = post(fleet, {"input": ""}).json()
    assert body["data"][0]["embedding"] == expected(bert.encode("", add_special_tokens=True))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": [[1, 2], "x"]}, None),
        ({"input": [10**6]}, "input"),
        ({"input": "x", "encoding_format": "hex"}, None),
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"input": "x", "truncate_prompt_tokens": MAX_LEN + 1}, "truncate_prompt_tokens"),
        ({"input": " ".join(["word"] * (MAX_LEN + 5))}, "input"),
        ({"input": "x", "add_special_tokens": False, "input_extra": 1, "model": "nope"}, "model"),
    ],
)
def test_bad_input_is_a_400_and_nothing_breaks(fleet: Fleet, body: dict, param: str | None) -> None:
    response = post(fleet, body)
    expected_status = 404 if body.get("model") == "nope" else 400
    assert response.status_code == expected_status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    assert post(fleet, {"input": "still serving"}).status_code == 200


def test_a_batch_too_large_for_the_gateway_is_refused(fleet: Fleet) -> None:
    response = post(fleet, {"input": ["x"] * 2049})
    assert response.status_code == 400
    assert "2048" in response.json()["error"]["message"]
