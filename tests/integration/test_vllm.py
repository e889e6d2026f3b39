"""herdsman in front of a real vLLM engine (CPU build, tiny random-weight Llama, Llama 3 tokenizer).

Greedy decoding (temperature 0) makes every output deterministic, and the reference for each
answer is vLLM itself: the same prompt ids sent straight to its VllmEngine service (grpcio), the
prompt ids made by transformers' ``apply_chat_template``/``encode``, and the text made by the
``tokenizers`` library from vLLM's output ids (what vLLM's own detokenizer produces).

Logprobs (chat ``top_logprobs``, completions ``logprobs``) are compared with the engine's own
``output_logprobs`` for the same prompt ids.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tests.gateway.test_chat import sse_events
from tokenizers import Tokenizer

from .conftest import (
    HERE,
    SERVED_NAME,
    EngineClient,
    Gateway,
    VllmServer,
    start_gateway_logged,
    wait_for,
)

CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hello! How are you today? Tell me about héllo wörld 🚀."},
]
TEXT = "The quick brown fox jumps over"
TIMEOUT = 120


@pytest.fixture(scope="module")
def reference(vllm_python: Path, tiny_model: Path) -> dict[str, list[list[int]]]:
    """Prompt ids made by transformers from the model folder, as vLLM's own server would."""
    done = subprocess.run(
        [str(vllm_python), str(HERE / "reference_tokens.py"), str(tiny_model)],
        input=json.dumps({"chats": [CHAT], "texts": [TEXT]}),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


def url(gateway: Gateway, path: str) -> str:
    return f"http://{gateway.address}{path}"


def chat(gateway: Gateway, **body: object) -> dict:
    body = {"model": SERVED_NAME, "messages": CHAT, **body}
    response = httpx.post(url(gateway, "/v1/chat/completions"), json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def chat_stream(gateway: Gateway, **body: object) -> list[dict]:
    body = {"model": SERVED_NAME, "messages": CHAT, "stream": True, **body}
    with httpx.stream(
        "POST", url(gateway, "/v1/chat/completions"), json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200, response.read()
        return sse_events(response)


def complete(gateway: Gateway, **body: object) -> dict:
    body = {"model": SERVED_NAME, **body}
    response = httpx.post(url(gateway, "/v1/completions"), json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def complete_stream(gateway: Gateway, **body: object) -> list[dict]:
    body = {"model": SERVED_NAME, "stream": True, **body}
    with httpx.stream("POST", url(gateway, "/v1/completions"), json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def streamed_choices(events: list[dict], key: str) -> dict[int, dict]:
    """Per choice index: the concatenated text and the finish_reason of a stream."""
    out: dict[int, dict] = {}
    for event in events:
        for choice in event["choices"]:
            entry = out.setdefault(choice["index"], {"text": "", "finish_reason": None})
            piece = choice["delta"].get("content") if key == "delta" else choice["text"]
            entry["text"] += piece or ""
            if choice.get("finish_reason"):
                assert entry["finish_reason"] is None, "one finish_reason per choice"
                entry["finish_reason"] = choice["finish_reason"]
    return out


def stream_usage(events: list[dict]) -> dict:
    usages = [e["usage"] for e in events if e.get("usage")]
    assert len(usages) == 1, events[-3:]
    assert events[-1].get("usage") and events[-1]["choices"] == []
    return usages[0]


# --- the model, auto-detection, the tokenizer from the engine -----------------------------------


def test_models_reports_the_engine(vllm_gateway: Gateway) -> None:
    models = httpx.get(url(vllm_gateway, "/v1/models"), timeout=30).json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]
    assert models["data"][0]["max_model_len"] == 4096
    assert httpx.get(url(vllm_gateway, "/health"), timeout=30).status_code == 200


def test_auto_backend_and_tokenizer_from_engine(
    vllm_server: VllmServer, vllm_gateway: Gateway, vllm_transport: str, tmp_path: Path
) -> None:
    """No --model-path: --backend auto detects vLLM and the tokenizer comes over GetTokenizer."""
    log = tmp_path / "gateway.log"
    cache = tmp_path / "xdg-cache"  # empty, so the tokenizer really is downloaded
    gateway = start_gateway_logged(
        vllm_server.address,
        log,
        "--backend",
        "auto",
        "--log-level",
        "info",
        "--grpc-transport",
        vllm_transport,
        env={"XDG_CACHE_HOME": str(cache)},
    )
    try:
        text = gateway.log_text()
        worker = rf"worker grpc://{vllm_server.address} \(w-\w+\): vllm backend"
        assert re.search(worker, text), text
        assert re.search(rf"tokenizer from {vllm_server.address} unpacked to {cache}", text), text
        assert "Receive GetTokenizer request" in vllm_server.log_text()
        unpacked = list(cache.rglob("tokenizer.json"))
        assert len(unpacked) == 1
        # The same answer as a gateway that reads the tokenizer from the model folder.
        ours = chat(gateway, max_tokens=12, temperature=0)
        local = chat(vllm_gateway, max_tokens=12, temperature=0)
        assert ours["choices"][0]["message"] == local["choices"][0]["message"]
        assert ours["usage"] == local["usage"]
    finally:
        gateway.stop()


# --- chat -----------------------------------------------------------------------------------------


def test_chat_matches_the_engine(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict, tokenizer: Tokenizer
) -> None:
    prompt_ids = reference["chats"][0]
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=16)
    body = chat(vllm_gateway, max_tokens=16, temperature=0)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == tokenizer.decode(list(ref.output_ids))
    assert choice["finish_reason"] == "length" == ref.finish_reason
    assert body["usage"] == {
        "prompt_tokens": ref.prompt_tokens,
        "completion_tokens": ref.completion_tokens,
        "total_tokens": ref.prompt_tokens + ref.completion_tokens,
    }
    # vLLM counted the prompt that transformers' apply_chat_template makes.
    assert ref.prompt_tokens == len(prompt_ids)
    assert ref.completion_tokens == 16


def test_chat_stream_equals_non_stream(vllm_gateway: Gateway) -> None:
    whole = chat(vllm_gateway, max_tokens=20, temperature=0)
    events = chat_stream(
        vllm_gateway, max_tokens=20, temperature=0, stream_options={"include_usage": True}
    )
    assert events[0]["choices"][0]["delta"].get("role") == "assistant"
    assert len({e["id"] for e in events}) == 1
    streamed = streamed_choices(events, "delta")
    assert streamed == {
        0: {"text": whole["choices"][0]["message"]["content"], "finish_reason": "length"}
    }
    assert stream_usage(events) == whole["usage"]


@pytest.mark.parametrize("max_tokens", [1, 7])
def test_max_tokens_gives_length(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict, max_tokens: int
) -> None:
    body = chat(vllm_gateway, max_tokens=max_tokens, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == max_tokens
    [ref] = engine_client.generate(reference["chats"][0], temperature=0.0, max_tokens=max_tokens)
    assert body["usage"]["prompt_tokens"] == ref.prompt_tokens


# --- completions --------------------------------------------------------------------------------


def test_completions_match_the_engine(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict, tokenizer: Tokenizer
) -> None:
    prompt_ids = reference["texts"][0]
    [ref] = engine_client.generate(prompt_ids, temperature=0.0, max_tokens=16)
    expected = tokenizer.decode(list(ref.output_ids))
    usage = {
        "prompt_tokens": ref.prompt_tokens,
        "completion_tokens": ref.completion_tokens,
        "total_tokens": ref.prompt_tokens + ref.completion_tokens,
    }
    for prompt in (TEXT, prompt_ids):
        body = complete(vllm_gateway, prompt=prompt, max_tokens=16, temperature=0)
        [choice] = body["choices"]
        assert (choice["text"], choice["finish_reason"]) == (expected, "length")
        assert body["usage"] == usage
    events = complete_stream(
        vllm_gateway,
        prompt=TEXT,
        max_tokens=16,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert streamed_choices(events, "text") == {0: {"text": expected, "finish_reason": "length"}}
    assert stream_usage(events) == usage


# --- stop strings -------------------------------------------------------------------------------


def _a_stop_string(text: str) -> tuple[str, int]:
    """A 3-character piece of ``text`` from its second half that does not occur earlier."""
    for start in range(len(text) // 2, len(text) - 3):
        piece = text[start : start + 3]
        if piece.strip() and text.find(piece) == start:
            return piece, start
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_string_chat(vllm_gateway: Gateway, stream: bool) -> None:
    full = chat(vllm_gateway, max_tokens=24, temperature=0)["choices"][0]["message"]["content"]
    stop, at = _a_stop_string(full)
    if stream:
        events = chat_stream(vllm_gateway, max_tokens=24, temperature=0, stop=[stop, "\x00never"])
        got = streamed_choices(events, "delta")[0]
    else:
        [choice] = chat(vllm_gateway, max_tokens=24, temperature=0, stop=[stop, "\x00never"])[
            "choices"
        ]
        got = {"text": choice["message"]["content"], "finish_reason": choice["finish_reason"]}
    assert got == {"text": full[:at], "finish_reason": "stop"}


def test_stop_string_completions(vllm_gateway: Gateway) -> None:
    full = complete(vllm_gateway, prompt=TEXT, max_tokens=24, temperature=0)["choices"][0]["text"]
    stop, at = _a_stop_string(full)
    [choice] = complete(vllm_gateway, prompt=TEXT, max_tokens=24, temperature=0, stop=stop)[
        "choices"
    ]
    assert (choice["text"], choice["finish_reason"]) == (full[:at], "stop")
    events = complete_stream(vllm_gateway, prompt=TEXT, max_tokens=24, temperature=0, stop=stop)
    assert streamed_choices(events, "text") == {0: {"text": full[:at], "finish_reason": "stop"}}


# --- n > 1 --------------------------------------------------------------------------------------


def test_n_argmax_choices_are_the_single_answer(vllm_gateway: Gateway) -> None:
    """n=3 with top_k=1: every choice is the greedy answer, counted three times."""
    single = chat(vllm_gateway, max_tokens=10, temperature=0)
    body = chat(vllm_gateway, max_tokens=10, temperature=1.0, top_k=1, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        assert choice["message"] == single["choices"][0]["message"]
        assert choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 30


def test_n_greedy_is_a_client_error(vllm_gateway: Gateway) -> None:
    body = {"model": SERVED_NAME, "messages": CHAT, "max_tokens": 5, "temperature": 0, "n": 3}
    response = httpx.post(url(vllm_gateway, "/v1/chat/completions"), json=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_n_sampled_matches_the_engine(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict, tokenizer: Tokenizer
) -> None:
    """Seeded sampling: herdsman's n choices are vLLM's n outputs, streamed or not."""
    refs = engine_client.generate(
        reference["chats"][0], temperature=1.0, seed=11, n=3, max_tokens=8
    )
    expected = {
        ref.index: {"text": tokenizer.decode(list(ref.output_ids)), "finish_reason": "length"}
        for ref in refs
    }
    assert sorted(expected) == [0, 1, 2]
    params = {"max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3}
    body = chat(vllm_gateway, **params)
    got = {
        c["index"]: {"text": c["message"]["content"], "finish_reason": c["finish_reason"]}
        for c in body["choices"]
    }
    assert got == expected
    assert body["usage"]["completion_tokens"] == sum(r.completion_tokens for r in refs)
    events = chat_stream(vllm_gateway, **params, stream_options={"include_usage": True})
    assert streamed_choices(events, "delta") == expected
    assert stream_usage(events) == body["usage"]


# --- abort --------------------------------------------------------------------------------------


def test_disconnect_aborts_in_the_engine(
    vllm_gateway: Gateway, vllm_server: VllmServer, engine_client: EngineClient
) -> None:
    """A client that goes away mid-stream stops the generation inside vLLM, not just the gateway.

    vLLM's side shows it twice: its request log names our request as aborted, and its scheduler
    (GetLoads) has nothing running long before the request could have finished on its own.
    """
    assert wait_for(lambda: engine_client.running_requests() == 0, 30), "engine not idle"
    max_tokens = 4000
    body = {
        "model": SERVED_NAME,
        "messages": CHAT,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    chunks = 0
    with httpx.stream(
        "POST", url(vllm_gateway, "/v1/chat/completions"), json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        started = time.monotonic()
        # Held: a line iterator dropped by the `break` would be closed, and closing it closes
        # the connection, racing the engine's load check below.
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                request_id = json.loads(line[6:])["id"]
                chunks += 1
                if chunks == 30:
                    break
        elapsed = time.monotonic() - started
        # GetLoads sees the request running (so its 0 below means something).
        assert engine_client.running_requests() == 1
    disconnected = time.monotonic()
    # At the rate seen so far, the whole answer would take this long.
    rest = (max_tokens - chunks) * elapsed / chunks
    aborted = re.compile(
        rf"Aborted request\(s\) [^\n]*{re.escape(request_id)}|"
        rf"Request {re.escape(request_id)}\S* aborted"
    )
    assert wait_for(lambda: aborted.search(vllm_server.log_text()) is not None, 30), (
        f"vLLM never logged an abort of {request_id}"
    )
    assert wait_for(lambda: engine_client.running_requests() == 0, 30)
    took = time.monotonic() - disconnected
    assert took < max(rest / 3, 2.0), f"engine idle {took:.1f}s after disconnect; rest {rest:.1f}s"


# --- logprobs -----------------------------------------------------------------------------------


def _engine_logprobs(ref: object, top_n: int) -> list[tuple[float, list[float]]]:
    """(the chosen token's logprob, the top_n logprobs, best first) per output token."""
    out = ref.output_logprobs  # type: ignore[attr-defined]
    return [
        (lp, sorted(top.values, reverse=True)[:top_n])
        for lp, top in zip(out.token_logprobs, out.top_logprobs, strict=True)
    ]


def _flat(rows: list[tuple[float, list[float]]]) -> list[float]:
    """For pytest.approx (no nesting): each row's shape is kept by its length, then values."""
    return [x for lp, top in rows for x in (float(len(top)), lp, *top)]


def test_chat_logprobs_are_the_engines(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict
) -> None:
    [ref] = engine_client.generate(reference["chats"][0], temperature=0.0, max_tokens=6, logprobs=3)
    expected = _engine_logprobs(ref, 3)
    assert len(expected) == 6
    params = {"max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    content = chat(vllm_gateway, **params)["choices"][0]["logprobs"]["content"]
    got = [(e["logprob"], [t["logprob"] for t in e["top_logprobs"]]) for e in content]
    assert _flat(got) == pytest.approx(_flat(expected), abs=1e-4)
    for entry in content:  # greedy: the chosen token is the best one
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    streamed = [
        entry
        for event in chat_stream(vllm_gateway, **params)
        for choice in event["choices"]
        for entry in (choice.get("logprobs") or {}).get("content") or []
    ]
    assert streamed == content


def test_completion_logprobs_are_the_engines(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict, tokenizer: Tokenizer
) -> None:
    [ref] = engine_client.generate(reference["texts"][0], temperature=0.0, max_tokens=6, logprobs=2)
    expected = _engine_logprobs(ref, 2)
    body = complete(vllm_gateway, prompt=TEXT, max_tokens=6, temperature=0, logprobs=2)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"] == pytest.approx([lp for lp, _ in expected], abs=1e-4)
    got = [
        (lp, sorted(top.values(), reverse=True))
        for lp, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    ]
    assert _flat(got) == pytest.approx(_flat(expected), abs=1e-4)
    assert "".join(logprobs["tokens"]) == body["choices"][0]["text"]


def test_echo_logprobs_are_the_engines_prompt_logprobs(
    vllm_gateway: Gateway, engine_client: EngineClient, reference: dict
) -> None:
    prompt_ids = reference["texts"][0]
    [ref] = engine_client.generate(
        prompt_ids, temperature=0.0, max_tokens=3, logprobs=1, prompt_logprobs=1
    )
    engine_prompt = ref.input_logprobs
    assert list(engine_prompt.token_ids) == prompt_ids
    expected = [v.value if v.HasField("value") else None for v in engine_prompt.token_logprobs]
    assert expected[0] is None and all(v is not None for v in expected[1:])

    body = complete(vllm_gateway, prompt=TEXT, max_tokens=3, temperature=0, logprobs=1, echo=True)
    [choice] = body["choices"]
    logprobs = choice["logprobs"]
    n = len(prompt_ids)
    assert choice["text"].startswith(TEXT)
    assert len(logprobs["tokens"]) == n + 3
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:n] == pytest.approx(expected[1:], abs=1e-4)
    output = _engine_logprobs(ref, 1)
    assert logprobs["token_logprobs"][n:] == pytest.approx([lp for lp, _ in output], abs=1e-4)
    # As vLLM echoes: the prompt as sent (no BOS text), while the tokens include BOS.
    assert "".join(logprobs["tokens"]).endswith(choice["text"][len(TEXT) :])


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_a_frozen_engine_fails_the_stream_then_serves_again(
    vllm_server: VllmServer,
    tiny_model: Path,
    engine_client: EngineClient,
    tmp_path: Path,
    transport: str,
) -> None:
    """vLLM's server process stops answering (SIGSTOP) mid-stream: its TCP connection stays up,
    only the keepalive PING can tell. The stream ends with an SSE error; once vLLM runs again it
    drops the request whose connection went away, and the gateway serves again."""
    assert wait_for(lambda: engine_client.running_requests() == 0, 30), "engine not idle"
    gateway = start_gateway_logged(
        vllm_server.address,
        tmp_path / "gateway.log",
        "--model-path", str(tiny_model),
        "--grpc-transport", transport,
        "--engine-keepalive-interval", "1",
        "--engine-keepalive-timeout", "1",
        "--health-check-timeout", "2",
    )  # fmt: skip
    body = {
        "model": SERVED_NAME,
        "messages": CHAT,
        "stream": True,
        "max_tokens": 4000,
        "temperature": 0,
    }
    pid = vllm_server.process.pid
    try:
        with httpx.stream(
            "POST", url(gateway, "/v1/chat/completions"), json=body, timeout=TIMEOUT
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
            os.kill(pid, signal.SIGSTOP)
            try:
                rest = [line for line in lines if line]
            finally:
                os.kill(pid, signal.SIGCONT)
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: ") :])["error"]
        assert error["code"] == "engine_unavailable", error
        assert wait_for(lambda: engine_client.running_requests() == 0, 60)
        short = {**body, "stream": False, "max_tokens": 3}
        assert wait_for(
            lambda: (
                httpx.post(
                    url(gateway, "/v1/chat/completions"), json=short, timeout=TIMEOUT
                ).status_code
                == 200
            ),
            60,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        gateway.stop()
