"""SGLang's native POST /generate: text or ids in, SGLang's output objects out, whole or streamed
(each event with the output so far), against the same generation pipeline as /v1/completions."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from tests.conftest import QWEN3

from herdsman.tokenizer import load_model_tokenizer

from .conftest import Fleet

QWEN = load_model_tokenizer(QWEN3)


def generate(fleet: Fleet, body: dict) -> httpx.Response:
    return httpx.post(fleet.url + "/generate", json={"model": "chat", **body}, timeout=30)


def test_text_in_text_and_ids_out(fleet: Fleet) -> None:
    body = generate(
        fleet, {"text": "Hello there", "sampling_params": {"max_new_tokens": 6, "temperature": 0}}
    ).json()
    assert isinstance(body, dict)
    assert QWEN.decode(body["output_ids"]) == body["text"]
    meta = body["meta_info"]
    assert meta["prompt_tokens"] == len(QWEN.encode("Hello there", add_special_tokens=True))
    assert meta["completion_tokens"] == len(body["output_ids"]) <= 6
    if meta["completion_tokens"] == 6:
        assert meta["finish_reason"] == {"type": "length", "length": 6}
    else:
        assert meta["finish_reason"]["type"] == "stop"
    assert meta["id"]


def test_a_batch_of_ids_with_n_gives_a_list(fleet: Fleet) -> None:
    body = generate(
        fleet,
        {
            "input_ids": [[1, 2, 3], [4, 5]],
            "sampling_params": {"max_new_tokens": 3, "n": 2, "ignore_eos": True},
        },
    ).json()
    assert isinstance(body, list) and len(body) == 4
    assert [item["index"] for item in body] == [0, 1, 2, 3]
    assert [item["meta_info"]["prompt_tokens"] for item in body] == [3, 3, 2, 2]
    assert all(item["meta_info"]["completion_tokens"] == 3 for item in body)


def test_logprobs_are_triples(fleet: Fleet) -> None:
    body = generate(
        fleet,
        {
            "text": "Count",
            "sampling_params": {"max_new_tokens": 4, "ignore_eos": True},
            "return_logprob": True,
            "top_logprobs_num": 2,
            "return_text_in_logprobs": True,
        },
    ).json()
    meta = body["meta_info"]
    triples = meta["output_token_logprobs"]
    assert [t[1] for t in triples] == body["output_ids"]
    assert all(t[0] <= 0 and isinstance(t[2], str) for t in triples)
    assert len(meta["output_top_logprobs"]) == 4
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])


def test_a_stream_carries_the_output_so_far(fleet: Fleet) -> None:
    # No model named: the gateway's one generative model (SGLang's API names none).
    payload = {"text": "Tell me", "stream": True, "sampling_params": {"max_new_tokens": 5}}
    events = []
    with httpx.stream("POST", fleet.url + "/generate", json=payload, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    outputs = [json.loads(e) for e in events[:-1]]
    texts = [o["text"] for o in outputs]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    ids = [o["output_ids"] for o in outputs]
    assert all(b[: len(a)] == a for a, b in itertools.pairwise(ids))
    assert outputs[-1]["meta_info"]["finish_reason"] is not None
    assert all(o["meta_info"]["finish_reason"] is None for o in outputs[:-1])
    assert QWEN.decode(ids[-1]) == texts[-1]


def test_a_stop_string_is_trimmed_unless_asked(fleet: Fleet) -> None:
    base = generate(
        fleet, {"text": "Go", "sampling_params": {"max_new_tokens": 12, "ignore_eos": True}}
    ).json()
    text = base["text"]
    stop = text.strip().split()[1] if len(text.split()) > 2 else None
    if stop is None:
        pytest.skip("the engine's text has too few words for a stop string")
    params = {"max_new_tokens": 12, "ignore_eos": True, "temperature": 0, "stop": stop}
    trimmed = generate(fleet, {"text": "Go", "sampling_params": params}).json()
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert not trimmed["text"].endswith(stop)
    kept = generate(
        fleet, {"text": "Go", "sampling_params": {**params, "no_stop_trim": True}}
    ).json()
    assert kept["text"].endswith(stop)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": "x", "input_ids": [1]},
        {"text": []},
        {"input_ids": []},
        {"input_ids": [[1], "x"]},
        {"input_ids": [10**7]},
        {"text": "x", "sampling_params": {"max_new_tokens": 10**6}},
        {"text": "x", "sampling_params": {"max_new_tokens": -1}},
        {"text": "x", "sampling_params": {"temperature": -1}},
        {"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}},
        {"text": "x", "top_logprobs_num": 100, "return_logprob": True},
    ],
)
def test_bad_requests_are_400(fleet: Fleet, body: dict) -> None:
    response = generate(fleet, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
