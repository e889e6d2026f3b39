"""/v1/tokenize and /v1/detokenize in vLLM's request and response shapes."""

from __future__ import annotations

import httpx
from tests.conftest import QWEN3
from tests.gateway.test_chat import MODEL
from tokenizers import Tokenizer

TOKENIZER = Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))


def test_tokenize_prompt(base_url: str) -> None:
    text = "Hello, gateway! 日本語 🙂"
    data = httpx.post(f"{base_url}/v1/tokenize", json={"model": MODEL, "prompt": text}).json()
    assert data["tokens"] == TOKENIZER.encode(text).ids
    assert data["count"] == len(data["tokens"])
    assert data["max_model_len"] == 40960
    assert data["token_strs"] is None


def test_tokenize_messages_matches_chat_prompt_tokens(base_url: str) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Grüße"}]
    data = httpx.post(f"{base_url}/v1/tokenize", json={"messages": messages}).json()
    expected = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nGrüße<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert data["tokens"] == TOKENIZER.encode(expected, add_special_tokens=False).ids
    usage = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 1},
    ).json()["usage"]
    assert usage["prompt_tokens"] == data["count"]
    no_think = httpx.post(
        f"{base_url}/v1/tokenize",
        json={"messages": messages, "chat_template_kwargs": {"enable_thinking": False}},
    ).json()
    assert no_think["count"] > data["count"]


def test_tokenize_token_strs_and_detokenize(base_url: str) -> None:
    data = httpx.post(
        f"{base_url}/v1/tokenize", json={"prompt": "one two", "return_token_strs": True}
    ).json()
    # The vocabulary's own pieces ("Ġtwo"), as vLLM's convert_ids_to_tokens returns them.
    assert data["token_strs"] == TOKENIZER.encode("one two").tokens
    assert data["token_strs"][1].startswith("Ġ")
    back = httpx.post(f"{base_url}/v1/detokenize", json={"model": MODEL, "tokens": data["tokens"]})
    assert back.json() == {"prompt": "one two"}


def test_tokenize_errors(base_url: str) -> None:
    assert httpx.post(f"{base_url}/v1/tokenize", json={}).status_code == 400
    assert (
        httpx.post(f"{base_url}/v1/tokenize", json={"prompt": "x", "model": "nope"}).status_code
        == 404
    )
    assert httpx.post(f"{base_url}/v1/detokenize", json={"tokens": [-1]}).status_code == 400
    assert httpx.post(f"{base_url}/v1/detokenize", json={"tokens": "abc"}).status_code == 400


def test_vllm_paths_without_v1(base_url: str) -> None:
    for path in ("/tokenize", "/v1/tokenize"):
        data = httpx.post(f"{base_url}{path}", json={"model": MODEL, "prompt": "hi there"}).json()
        assert data["count"] == len(data["tokens"]) > 0
    back = httpx.post(f"{base_url}/detokenize", json={"model": MODEL, "tokens": data["tokens"]})
    assert back.json()["prompt"] == "hi there"
