"""The Responses API in front of a real vLLM engine (the session's gRPC servicer, tiny Llama).

A Responses request is a chat request in other clothes: its prompt must be the one vLLM's own
OpenAI server renders for the equivalent chat messages, and its greedy output the engine's own
answer to that prompt. The references, none of them herdsman's:

- the prompt ids vLLM's server renders for the chat messages (``vllm_render.py``: vLLM's
  ``OnlineRenderer.render_chat``, the path of its chat completions and ``/tokenize``; run in the
  vLLM venv, no server started);
- the engine's greedy output for those ids, asked of the VllmEngine service directly (grpcio),
  decoded by the ``tokenizers`` library;
- and herdsman's own chat completion of the same messages, which must agree token for token.

The model folder is the tiny Llama with the differential tier's Llama 3.1-style template (tools,
tool calls and tool results rendered). Its weights never pick EOS or another special token, so a
greedy answer always runs to ``max_output_tokens``: the response is ``incomplete``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.responses.conftest import parse_sse
from tokenizers import Tokenizer

from .conftest import (
    HERE,
    SERVED_NAME,
    EngineClient,
    Gateway,
    VllmServer,
    start_gateway_logged,
)
from .test_vllm_differential import TOOL_TEMPLATE

TIMEOUT = 120.0
MAX_TOKENS = 8
INSTRUCTIONS = "You are a terse assistant."
QUESTION = "What is the weather like in Paris today? Answer in héllo wörld style 🚀."
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}
ARGUMENTS = '{"city": "Paris", "unit": "C"}'
TOOL_OUTPUT = '{"temperature": 18, "sky": "sunny"}'

# Each case: the Responses body (without model and sampling) and the equivalent chat request.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text": (
        {"instructions": INSTRUCTIONS, "input": QUESTION},
        {
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": QUESTION},
            ]
        },
    ),
    "turns": (
        {
            "input": [
                {"role": "developer", "content": INSTRUCTIONS},
                {"role": "user", "content": "Hello!"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi. What do you need?"}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi. What do you need?"},
                {"role": "user", "content": QUESTION},
            ]
        },
    ),
    "tool_round_trip": (
        {
            "instructions": INSTRUCTIONS,
            "tools": [{"type": "function", **WEATHER}],
            "input": [
                {"role": "user", "content": QUESTION},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": ARGUMENTS,
                },
                {"type": "function_call_output", "call_id": "call_1", "output": TOOL_OUTPUT},
            ],
        },
        {
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGUMENTS},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": TOOL_OUTPUT},
            ],
            "tools": [{"type": "function", "function": WEATHER}],
        },
    ),
}


@pytest.fixture(scope="module")
def tools_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny Llama with a template that renders tools (same weights: the session's
    gRPC engine serves it)."""
    out = tmp_path_factory.mktemp("tiny-llama-responses")
    for item in tiny_model.iterdir():
        shutil.copyfile(item, out / item.name)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TOOL_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def gateway(
    vllm_server: VllmServer, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("gateway-responses")
    gateway = start_gateway_logged(
        vllm_server.address,
        directory / "gateway.log",
        "--model-path",
        str(tools_model),
        "--storage",
        f"sqlite:///{directory / 'responses.db'}",
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def vllm_prompts(
    vllm_python: Path, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[int]]:
    """The prompt ids vLLM's OpenAI server renders for each case's chat request."""
    # The renderer's ModelConfig asks for a 32k context, more than the tiny model's positions:
    # it renders from the tokenizer files and a config.json allowing that (no weights read).
    render_dir = tmp_path_factory.mktemp("tiny-llama-render")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tools_model / name, render_dir / name)
    config = json.loads((tools_model / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (render_dir / "config.json").write_text(json.dumps(config))
    request = {
        "cases": [
            {"id": name, "model": str(render_dir), "request": chat}
            for name, (_body, chat) in CASES.items()
        ]
    }
    done = subprocess.run(
        [str(vllm_python), str(HERE / "vllm_render.py")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = {r["id"]: r for r in json.loads(done.stdout)["results"]}
    prompts = {}
    for name in CASES:
        assert results[name]["error"] is None, results[name]
        prompts[name] = results[name]["prompt_token_ids"]
    return prompts


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


def respond(gateway: Gateway, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The final response object of a Responses call, streamed or not."""
    body = {
        "model": SERVED_NAME,
        "temperature": 0,
        "max_output_tokens": MAX_TOKENS,
        "stream": stream,
        **body,
    }
    url = f"http://{gateway.address}/v1/responses"
    if not stream:
        answer = httpx.post(url, json=body, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())
    with httpx.stream("POST", url, json=body, timeout=TIMEOUT) as answer:
        assert answer.status_code == 200, answer.read()
        events = parse_sse(answer.iter_lines())
    final: dict[str, Any] = events[-1]["response"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == deltas
    return final


def chat(gateway: Gateway, request: dict[str, Any]) -> dict[str, Any]:
    body = {"model": SERVED_NAME, "temperature": 0, "max_tokens": MAX_TOKENS, **request}
    answer = httpx.post(f"http://{gateway.address}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def output_text(response: dict[str, Any]) -> str:
    [message] = response["output"]
    assert message["type"] == "message" and message["role"] == "assistant", response["output"]
    [part] = message["content"]
    assert part["type"] == "output_text"
    return str(part["text"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", ["text", "turns"])
def test_text_response_is_the_engines_greedy_answer(
    gateway: Gateway,
    engine_client: EngineClient,
    tokenizer: Tokenizer,
    vllm_prompts: dict[str, list[int]],
    case: str,
    stream: bool,
) -> None:
    body, chat_request = CASES[case]
    prompt_ids = vllm_prompts[case]
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=MAX_TOKENS)
    assert ref.finish_reason == "length"

    response = respond(gateway, body, stream=stream)
    text = output_text(response)
    # The engine's answer to the prompt vLLM renders, token for token.
    assert text == tokenizer.decode(list(ref.output_ids))
    assert response["usage"]["input_tokens"] == len(prompt_ids) == ref.prompt_tokens
    assert response["usage"]["output_tokens"] == ref.completion_tokens == MAX_TOKENS
    assert response["usage"]["total_tokens"] == len(prompt_ids) + MAX_TOKENS
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}

    # And herdsman's chat completion of the same messages.
    completion = chat(gateway, chat_request)
    [choice] = completion["choices"]
    assert choice["message"]["content"] == text
    assert choice["finish_reason"] == "length"
    assert completion["usage"] == {
        "prompt_tokens": response["usage"]["input_tokens"],
        "completion_tokens": response["usage"]["output_tokens"],
        "total_tokens": response["usage"]["total_tokens"],
    }


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_function_call_round_trip_is_vllms_prompt(
    gateway: Gateway,
    engine_client: EngineClient,
    tokenizer: Tokenizer,
    vllm_prompts: dict[str, list[int]],
    stream: bool,
) -> None:
    body, chat_request = CASES["tool_round_trip"]
    prompt_ids = vllm_prompts["tool_round_trip"]
    # vLLM's rendering holds the call and its output (the template writes them as JSON).
    rendered = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert '"get_weather"' in rendered and '\\"sky\\": \\"sunny\\"' in rendered

    response = respond(gateway, body, stream=stream)
    assert response["usage"]["input_tokens"] == len(prompt_ids)
    completion = chat(gateway, chat_request)
    assert completion["usage"]["prompt_tokens"] == len(prompt_ids)

    # It answers with text: the engine's greedy answer to that prompt, and the chat's.
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=MAX_TOKENS)
    text = output_text(response)
    assert (
        text
        == tokenizer.decode(list(ref.output_ids))
        == completion["choices"][0]["message"]["content"]
    )
    assert text.strip()
    assert response["usage"]["output_tokens"] == MAX_TOKENS
    assert response["status"] == "incomplete"
    assert response["tools"] == body["tools"]

    # Stored: its input items are the three items sent, the function call's arguments intact.
    items = httpx.get(
        f"http://{gateway.address}/v1/responses/{response['id']}/input_items",
        params={"order": "asc"},
        timeout=TIMEOUT,
    ).json()["data"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1]["arguments"] == ARGUMENTS and items[2]["output"] == TOOL_OUTPUT
