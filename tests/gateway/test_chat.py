"""Chat and text completions through the gateway, against engine-sim speaking each protocol."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.conftest import QWEN3
from tokenizers import Tokenizer

MODEL = "qwen3"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))


def sse_events(response: httpx.Response) -> list[dict]:
    events, done = [], False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        assert not done, "nothing may follow [DONE]"
        if payload == "[DONE]":
            done = True
            continue
        events.append(json.loads(payload))
    assert done, "stream must end with data: [DONE]"
    return events


def stream_sse(url: str, body: dict, timeout: float = 30) -> list[dict]:
    """POST a streamed request and return its SSE events (checked to end with [DONE])."""
    with httpx.stream("POST", url, json=body, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        return sse_events(response)


def chat(base_url: str, **body) -> httpx.Response:
    body.setdefault("model", MODEL)
    body.setdefault("messages", [{"role": "user", "content": "Tell me about gateways."}])
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)


def test_chat_non_streaming(base_url: str, tokenizer: Tokenizer) -> None:
    response = chat(base_url, max_tokens=12, return_token_ids=True)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == MODEL
    [choice] = data["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    # The text is the engine's ids as the tokenizers library decodes them.
    assert choice["message"]["content"] == tokenizer.decode(choice["token_ids"])
    usage = data["usage"]
    assert usage["completion_tokens"] == len(choice["token_ids"]) == 12
    assert usage["prompt_tokens"] == len(data["prompt_token_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12


@pytest.mark.parametrize("case", ["system_and_user", "unicode", "multi_turn"])
def test_chat_prompt_is_the_reference_rendering(
    base_url: str, tokenizer: Tokenizer, case: str
) -> None:
    """The prompt ids the engine gets: transformers' rendering of the Qwen3 template (the golden
    of tests/templates, made by scripts/chat_template_goldens.py), encoded by tokenizers."""
    conversation = json.loads((TEMPLATES / "conversations.json").read_text())[case]
    golden = json.loads((TEMPLATES / "goldens.json").read_text())["cases"][f"qwen3/{case}"]
    response = chat(
        base_url, messages=conversation["messages"], max_tokens=1, return_token_ids=True
    )
    data = response.json()
    expected = tokenizer.encode(golden["text"], add_special_tokens=False).ids
    assert data["prompt_token_ids"] == expected
    assert data["usage"]["prompt_tokens"] == len(expected)


def test_chat_streaming_equals_token_decode(base_url: str, tokenizer: Tokenizer) -> None:
    with httpx.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        timeout=30,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["length"]
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 40
    # The streamed text is the decoding (tokenizers) of the ids the engine gives this request.
    again = chat(
        base_url,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=40,
        return_token_ids=True,
    ).json()["choices"][0]
    assert text == tokenizer.decode(again["token_ids"]) == again["message"]["content"]


def test_streamed_text_equals_non_streamed(base_url: str) -> None:
    body = {"max_tokens": 30, "seed": 7, "temperature": 0}
    full = chat(base_url, **body).json()["choices"][0]["message"]["content"]
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
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == full


def test_stop_string_trims_and_reports(base_url: str) -> None:
    body = {"max_tokens": 60, "seed": 3, "temperature": 0}
    full = chat(base_url, **body).json()["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) > 6
    stop = " " + words[4]
    expected = full[: full.index(stop)]
    data = chat(base_url, stop=[stop], **body).json()
    [choice] = data["choices"]
    assert choice["message"]["content"] == expected
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop
    # Tokens counted up to the one that completes the stop string (vLLM's count), not what the
    # engine produced before it was stopped: the shortest max_tokens whose output holds it.
    shortest = next(
        k
        for k in range(1, 61)
        if stop
        in chat(base_url, **{**body, "max_tokens": k}).json()["choices"][0]["message"]["content"]
    )
    assert data["usage"]["completion_tokens"] == shortest
    events = stream_sse(
        f"{base_url}/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me about gateways."}],
            "stream": True,
            "stop": stop,
            **body,
        },
        timeout=30,
    )
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_return_token_ids(base_url: str, tokenizer: Tokenizer) -> None:
    """vLLM's ``return_token_ids``: the prompt's ids and each choice's output ids, which decode
    (tokenizers, the reference) to the text; after a stop string, up to the token completing it."""
    body = {"max_tokens": 40, "seed": 3, "temperature": 0, "return_token_ids": True}
    data = chat(base_url, **body).json()
    [choice] = data["choices"]
    messages = [{"role": "user", "content": "Tell me about gateways."}]
    tokenized = httpx.post(f"{base_url}/v1/tokenize", json={"messages": messages}).json()
    assert data["prompt_token_ids"] == tokenized["tokens"]
    assert len(choice["token_ids"]) == data["usage"]["completion_tokens"] == 40
    assert tokenizer.decode(choice["token_ids"]) == choice["message"]["content"]
    stop = " " + choice["message"]["content"].split()[3]
    stopped = chat(base_url, stop=stop, **body).json()
    [cut] = stopped["choices"]
    ids = cut["token_ids"]
    assert len(ids) == stopped["usage"]["completion_tokens"]
    assert stop in tokenizer.decode(ids) and stop not in tokenizer.decode(ids[:-1])
    assert tokenizer.decode(ids).startswith(cut["message"]["content"] + stop)
    assert "token_ids" not in chat(base_url, max_tokens=2).json()["choices"][0]
    completion = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Gateways are", **body},
        timeout=30,
    ).json()
    [choice] = completion["choices"]
    assert choice["prompt_token_ids"] == tokenizer.encode("Gateways are").ids
    assert tokenizer.decode(choice["token_ids"]) == choice["text"]


@pytest.mark.parametrize("stop", [None, "cut"])
def test_return_token_ids_streamed(base_url: str, tokenizer: Tokenizer, stop: str | None) -> None:
    """Streamed, each chunk carries its own ids (vLLM's shape): joined, they are the
    non-streamed response's ids; the prompt's ids come once (chat: on the first chunk)."""
    body = {"max_tokens": 30, "seed": 5, "temperature": 0, "return_token_ids": True, "n": 2}
    whole = chat(base_url, **body).json()
    if stop is not None:
        stop = " " + whole["choices"][0]["message"]["content"].split()[3]
        body["stop"] = stop
        whole = chat(base_url, **body).json()
    messages = [{"role": "user", "content": "Tell me about gateways."}]
    events = stream_sse(
        f"{base_url}/v1/chat/completions",
        {"model": MODEL, "messages": messages, "stream": True, **body},
    )
    assert events[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    assert all("prompt_token_ids" not in e for e in events[1:])
    for choice in whole["choices"]:
        chunks = [c for e in events for c in e["choices"] if c["index"] == choice["index"]]
        streamed = [i for c in chunks for i in c.get("token_ids") or []]
        assert streamed == choice["token_ids"]
        assert (
            "".join(c["delta"].get("content") or "" for c in chunks) == choice["message"]["content"]
        )
    prompt_ids = tokenizer.encode("Gateways are").ids
    request = {"model": MODEL, "prompt": "Gateways are", **body}
    complete = httpx.post(f"{base_url}/v1/completions", json=request, timeout=30).json()
    events = stream_sse(f"{base_url}/v1/completions", {**request, "stream": True})
    for choice in complete["choices"]:
        chunks = [c for e in events for c in e["choices"] if c["index"] == choice["index"]]
        assert chunks[0]["prompt_token_ids"] == prompt_ids
        assert all("prompt_token_ids" not in c for c in chunks[1:])
        streamed = [i for c in chunks for i in c["token_ids"]]
        assert streamed == choice["token_ids"]
        assert "".join(c["text"] for c in chunks) == choice["text"]


def test_stop_string_kept_when_asked(base_url: str) -> None:
    body = {"max_tokens": 60, "seed": 3, "temperature": 0}
    full = chat(base_url, **body).json()["choices"][0]["message"]["content"]
    stop = " " + full.split()[4]
    expected = full[: full.index(stop) + len(stop)]
    for flag in ("include_stop_str_in_output", "no_stop_trim"):
        data = chat(base_url, stop=stop, **{flag: True}, **body).json()
        assert data["choices"][0]["message"]["content"] == expected


def test_logit_bias_validated_and_accepted(base_url: str) -> None:
    assert chat(base_url, max_tokens=2, logit_bias={"100": 5.0}).status_code == 200
    assert chat(base_url, max_tokens=2, logit_bias={"abc": 1.0}).status_code == 400
    assert chat(base_url, max_tokens=2, logit_bias={"100": 500.0}).status_code == 400


def test_n_choices(base_url: str) -> None:
    data = chat(base_url, max_tokens=8, n=3).json()
    assert sorted(c["index"] for c in data["choices"]) == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in data["choices"])
    assert data["usage"]["completion_tokens"] == 24


def test_completions(base_url: str, tokenizer: Tokenizer) -> None:
    response = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={
            "model": MODEL,
            "prompt": "The gateway",
            "max_tokens": 10,
        },
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 10
    again = httpx.post(
        f"{base_url}/v1/completions",
        timeout=30,
        json={"model": MODEL, "prompt": "The gateway", "max_tokens": 10, "return_token_ids": True},
    ).json()["choices"][0]
    assert data["choices"][0]["text"] == again["text"] == tokenizer.decode(again["token_ids"])


def test_completions_streaming_token_ids_prompt(base_url: str, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Once upon a time", add_special_tokens=False).ids
    events = stream_sse(
        f"{base_url}/v1/completions",
        {
            "model": MODEL,
            "prompt": ids,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=30,
    )
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert events[-1]["usage"]["prompt_tokens"] == len(ids)


def test_long_prompt_crosses_flow_control_windows(base_url: str, tokenizer: Tokenizer) -> None:
    # 30k ids are ~120 KB of protobuf: more than HTTP/2's initial 64 KB window.
    ids = (tokenizer.encode("The quick brown fox jumps over the lazy dog. ").ids * 3000)[:30000]
    response = httpx.post(
        f"{base_url}/v1/completions",
        timeout=60,
        json={
            "model": MODEL,
            "prompt": ids,
            "max_tokens": 3,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 30000


def test_models_and_health(base_url: str) -> None:
    models = httpx.get(f"{base_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 40960
    health = httpx.get(f"{base_url}/health")
    assert health.status_code == 200
    assert health.json()["healthy_workers"] == 1


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_echo_starts_with_the_continued_message(
    base_url: str, add_generation_prompt: bool
) -> None:
    """vLLM's chat ``echo``: continuing an assistant turn, the answer starts with its text."""
    messages = [
        {"role": "user", "content": "Tell me about gateways."},
        {"role": "assistant", "content": "Sure, here"},
    ]
    body = {
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "seed": 1,
        "add_generation_prompt": add_generation_prompt,
        "continue_final_message": not add_generation_prompt,
    }
    plain = chat(base_url, **body).json()["choices"][0]["message"]["content"]
    echoed = chat(base_url, echo=True, **body).json()["choices"][0]["message"]["content"]
    assert echoed == "Sure, here" + plain
    events = stream_sse(
        f"{base_url}/v1/chat/completions", {"model": MODEL, "stream": True, "echo": True, **body}
    )
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    streamed = "".join(d.get("content") or "" for d in deltas)
    assert streamed == echoed
    # A last message of another role is not echoed when the answer is the assistant's.
    asked = [{"role": "user", "content": "Tell me about gateways."}]
    data = chat(base_url, messages=asked, echo=True, max_tokens=4, temperature=0, seed=1).json()
    again = chat(base_url, messages=asked, max_tokens=4, temperature=0, seed=1).json()
    assert data["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
