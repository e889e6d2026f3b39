"""The official openai client, pointed at the gateway."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_openai_streams_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="qwen3",
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces).strip()
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 20


def test_openai_chat_and_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 5
    completion = client.completions.create(model="qwen3", prompt="Hello", max_tokens=4)
    assert completion.choices[0].text
    assert [m.id for m in client.models.list()] == ["qwen3"]


def test_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert "temperature" in str(caught.value)
