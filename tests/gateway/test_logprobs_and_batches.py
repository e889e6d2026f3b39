"""Logprobs in both OpenAI shapes, echo, and batched completion prompts."""

from __future__ import annotations

import math

import httpx
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
