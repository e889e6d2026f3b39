"""Logprobs in both OpenAI shapes, echo, and batched completion prompts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest
from tests.conftest import QWEN3, start_gateway, start_sim
from tests.gateway.test_chat import MODEL, chat, stream_sse


def test_chat_logprobs_non_streaming(base_url: str) -> None:
    data = chat(base_url, max_tokens=6, logprobs=True, top_logprobs=3).json()
    [choice] = data["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == 6
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and math.isfinite(entry["logprob"])
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 3
        values = [t["logprob"] for t in entry["top_logprobs"]]
        assert values == sorted(values, reverse=True)


def test_chat_logprobs_streaming_match_non_streaming(base_url: str) -> None:
    body = {"max_tokens": 8, "logprobs": True, "top_logprobs": 2, "seed": 5, "temperature": 0}
    expected = chat(base_url, **body).json()["choices"][0]["logprobs"]["content"]
    events = stream_sse(
        f"{base_url}/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me about gateways."}],
            "stream": True,
            **body,
        },
        timeout=30,
    )
    streamed = [
        e
        for ev in events
        if ev["choices"] and ev["choices"][0]["logprobs"]
        for e in ev["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == expected


def test_no_logprobs_unless_asked(base_url: str) -> None:
    assert chat(base_url, max_tokens=3).json()["choices"][0]["logprobs"] is None


def test_completion_logprobs(base_url: str) -> None:
    data = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={
            "model": MODEL,
            "prompt": "The gateway",
            "max_tokens": 5,
            "logprobs": 2,
        },
    ).json()
    lp = data["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == data["choices"][0]["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(5)]
    assert all(len(top) <= 2 for top in lp["top_logprobs"])


def test_echo(base_url: str) -> None:
    prompt = "Once upon a time"
    plain = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 4,
            "seed": 1,
            "temperature": 0,
        },
    ).json()["choices"][0]["text"]
    echoed = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 4,
            "seed": 1,
            "temperature": 0,
            "echo": True,
        },
    ).json()["choices"][0]["text"]
    assert echoed == prompt + plain
    events = stream_sse(
        f"{base_url}/v1/completions",
        {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 4,
            "seed": 1,
            "temperature": 0,
            "echo": True,
            "stream": True,
        },
        timeout=30,
    )
    assert "".join(e["choices"][0]["text"] for e in events) == prompt + plain


def test_echo_with_logprobs_covers_the_prompt(base_url: str) -> None:
    prompt = "Once upon a time"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "seed": 3, "temperature": 0}
    prompt_ids = httpx.post(f"{base_url}/tokenize", json={"model": MODEL, "prompt": prompt})
    prompt_ids = prompt_ids.json()["tokens"]
    data = httpx.post(
        f"{base_url}/v1/completions", timeout=30, json={**body, "echo": True, "logprobs": 2}
    ).json()
    [choice] = data["choices"]
    lp = choice["logprobs"]
    n = len(prompt_ids) + 4
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert "".join(lp["tokens"]) == choice["text"]
    assert choice["text"].startswith(prompt)
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n)]
    # Nothing precedes the first prompt token: no logprob, no alternatives.
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"][1:])
    assert all(top is not None and 0 < len(top) <= 2 for top in lp["top_logprobs"][1:])
    # The output's part is what the same request without echo returns.
    plain = httpx.post(f"{base_url}/v1/completions", timeout=30, json={**body, "logprobs": 2})
    plain_lp = plain.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][len(prompt_ids) :] == plain_lp["token_logprobs"]
    assert lp["tokens"][len(prompt_ids) :] == plain_lp["tokens"]

    events = stream_sse(
        f"{base_url}/v1/completions",
        {**body, "echo": True, "logprobs": 2, "stream": True},
        timeout=30,
    )
    parts = [e["choices"][0] for e in events if e["choices"]]
    assert parts[0]["text"] == prompt  # the echo, with the prompt's logprobs
    assert parts[0]["logprobs"]["tokens"] == lp["tokens"][: len(prompt_ids)]
    streamed = {
        key: [v for p in parts if p["logprobs"] for v in p["logprobs"][key]]
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    }
    assert streamed == lp


def test_echo_with_logprobs_for_token_id_prompts_and_n(base_url: str) -> None:
    events = stream_sse(
        f"{base_url}/v1/completions",
        {
            "model": MODEL,
            "prompt": [[791, 1879, 374], [9906, 1917]],
            "max_tokens": 2,
            "n": 2,
            "echo": True,
            "logprobs": 0,
            "stream": True,
        },
        timeout=30,
    )
    first: dict[int, dict] = {}
    for event in events:
        for part in event["choices"]:
            first.setdefault(part["index"], part)
    assert sorted(first) == [0, 1, 2, 3]
    for index, part in first.items():
        size = 3 if index < 2 else 2
        assert len(part["logprobs"]["tokens"]) == size
        assert part["logprobs"]["token_logprobs"][0] is None


def test_batched_prompts(base_url: str) -> None:
    prompts = ["First prompt", "Second one", "Third"]
    data = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={
            "model": MODEL,
            "prompt": prompts,
            "max_tokens": 3,
            "n": 2,
        },
    ).json()
    assert sorted(c["index"] for c in data["choices"]) == list(range(6))
    assert data["usage"]["completion_tokens"] == 18
    events = stream_sse(
        f"{base_url}/v1/completions",
        {
            "model": MODEL,
            "prompt": [[1, 2, 3], [4, 5, 6, 7]],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=30,
    )
    finished = sorted(
        e["choices"][0]["index"]
        for e in events
        if e["choices"] and e["choices"][0]["finish_reason"]
    )
    assert finished == [0, 1]
    assert events[-1]["usage"]["prompt_tokens"] == 7


def test_prompts_times_n_is_capped(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": "qwen3", "prompt": ["a", "b", "c"], "n": 100, "max_tokens": 1},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and "at most 256" in error["message"]


@pytest.fixture(scope="module")
def once_url() -> Iterator[str]:
    """A gateway before a vLLM sim that sends the prompt's logprobs with one choice only."""
    sim = start_sim(QWEN3, "vllm", "--prompt-logprobs-once", "--itl-base-ms", "1")
    gateway = start_gateway(sim.address)
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_echo_logprobs_for_every_choice_when_the_engine_sends_them_once(
    once_url: str, stream: bool
) -> None:
    # vLLM coalesces the outputs of several choices when its servicer lags, and keeps one
    # choice's prompt logprobs: every choice still echoes the (shared) prompt's logprobs.
    prompt = [791, 1879, 374, 9906]
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 3,
        "n": 3,
        "echo": True,
        "logprobs": 1,
        "stream": stream,
    }
    if stream:
        choices: dict[int, dict[str, list]] = {}
        for event in stream_sse(f"{once_url}/v1/completions", body, timeout=30):
            for part in event["choices"]:
                merged = choices.setdefault(part["index"], {"tokens": [], "token_logprobs": []})
                if part["logprobs"]:
                    merged["tokens"] += part["logprobs"]["tokens"]
                    merged["token_logprobs"] += part["logprobs"]["token_logprobs"]
    else:
        data = httpx.post(f"{once_url}/v1/completions", timeout=30, json=body).json()
        choices = {c["index"]: c["logprobs"] for c in data["choices"]}
    assert sorted(choices) == [0, 1, 2]
    heads = [choices[i]["token_logprobs"][: len(prompt)] for i in range(3)]
    assert heads[0][0] is None and all(v is not None for v in heads[0][1:])
    assert heads[1] == heads[0] and heads[2] == heads[0]
    assert all(len(choices[i]["tokens"]) == len(prompt) + 3 for i in range(3))
