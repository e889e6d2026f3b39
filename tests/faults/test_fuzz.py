"""Fuzzing every endpoint of a real gateway with generated request bodies (hypothesis): well-formed
requests with odd values, wrong types and shapes, mutated and broken JSON, raw bytes.

Whatever comes in, the answer is a response below 500 (a streamed 200 ends with [DONE] or an error
event then [DONE]), the process keeps serving, and its memory and task count stay flat.

HERDSMAN_FUZZ_EXAMPLES sets the examples per endpoint (default 10,000). Generation is derandomized:
every run sends the same bodies, so a failure reproduces.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import QWEN3, Proc, start_gateway, start_sim

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("HERDSMAN_FUZZ_EXAMPLES", "10000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# -- strategies ------------------------------------------------------------------------------------
text = st.text(max_size=24)
odd_text = st.one_of(
    text,
    st.sampled_from(["", " ", "<|im_start|>", "<think>", "</think>", "<tool_call>", "\x00", "🙂"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
ints = st.one_of(
    st.integers(-3, 10), st.integers(), st.sampled_from([2**31, 2**32, 2**63, -(2**63)])
)
floats = st.one_of(st.floats(-3, 3), st.floats(allow_nan=False, allow_infinity=False))
leaf = st.one_of(st.none(), st.booleans(), ints, floats, odd_text)
json_value = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


# A value of the wrong kind: cheap to draw (the recursive json_value is kept for a few fields).
wrong = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    st.text(max_size=4),
    st.lists(st.integers(-1, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def some(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly the plausible value, sometimes a value of any other kind."""
    return st.one_of(strategy, strategy, strategy, wrong)


ROLES = ["system", "developer", "user", "assistant", "tool", "", "bot"]
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": some(odd_text)}),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["image_url", "input_audio", "video_url", "file"]),
            "image_url": some(st.fixed_dictionaries({"url": some(odd_text)})),
        }
    ),
    json_value,
)
tool_call = st.fixed_dictionaries(
    {"id": some(text), "type": some(st.just("function"))},
    optional={
        "function": some(
            st.fixed_dictionaries(
                {"name": some(text), "arguments": some(st.one_of(odd_text, st.just('{"a": 1}')))}
            )
        )
    },
)
message = st.fixed_dictionaries(
    {"role": some(st.sampled_from(ROLES))},
    optional={
        "content": st.one_of(st.none(), odd_text, st.lists(part, max_size=3), json_value),
        "name": some(text),
        "tool_calls": some(st.lists(tool_call, max_size=2)),
        "tool_call_id": some(text),
        "reasoning_content": some(odd_text),
    },
)
tool = st.fixed_dictionaries(
    {"type": some(st.just("function"))},
    optional={
        "function": some(
            st.fixed_dictionaries(
                {"name": some(text)},
                optional={
                    "description": some(text),
                    "parameters": some(
                        st.just({"type": "object", "properties": {"x": {"type": "string"}}})
                    ),
                },
            )
        )
    },
)
small = st.one_of(st.integers(1, 6), ints)
sampling = {
    "max_tokens": some(small),
    "temperature": some(floats),
    "top_p": some(floats),
    "top_k": some(ints),
    "min_p": some(floats),
    "n": some(st.integers(-1, 3)),
    "stream": some(st.booleans()),
    "stream_options": some(st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})),
    "stop": some(st.one_of(odd_text, st.lists(odd_text, max_size=3))),
    "stop_token_ids": some(st.lists(ints, max_size=3)),
    "seed": some(ints),
    "presence_penalty": some(floats),
    "frequency_penalty": some(floats),
    "repetition_penalty": some(floats),
    "ignore_eos": some(st.booleans()),
    "min_tokens": some(st.integers(0, 4)),
    "skip_special_tokens": some(st.booleans()),
    "include_stop_str_in_output": some(st.booleans()),
    "logit_bias": some(st.dictionaries(st.one_of(text, st.integers(0, 200000).map(str)), floats)),
    "user": some(text),
}
chat_body = st.fixed_dictionaries(
    {"model": some(st.just("qwen3")), "messages": some(st.lists(message, max_size=4))},
    optional={
        **sampling,
        "max_completion_tokens": some(small),
        "logprobs": some(st.booleans()),
        "top_logprobs": some(st.integers(-1, 21)),
        "tools": some(st.lists(tool, max_size=2)),
        "tool_choice": some(
            st.one_of(
                st.sampled_from(["none", "auto", "required"]),
                st.fixed_dictionaries(
                    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": text})}
                ),
            )
        ),
        "response_format": some(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object", "json_schema", "regex"])},
                optional={"json_schema": json_value},
            )
        ),
        "add_generation_prompt": some(st.booleans()),
        "continue_final_message": some(st.booleans()),
        "chat_template_kwargs": some(
            st.dictionaries(st.sampled_from(["enable_thinking", "thinking", "tools"]), json_value)
        ),
        "separate_reasoning": some(st.booleans()),
        "guided_json": json_value,
        "guided_regex": some(odd_text),
    },
)
completion_body = st.fixed_dictionaries(
    {
        "model": some(st.just("qwen3")),
        "prompt": some(
            st.one_of(
                odd_text,
                st.lists(ints, max_size=6),
                st.lists(odd_text, max_size=3),
                st.lists(st.lists(st.integers(0, 151700), max_size=4), max_size=3),
            )
        ),
    },
    optional={
        **sampling,
        "echo": some(st.booleans()),
        "logprobs": some(st.integers(-1, 21)),
        "suffix": some(text),
        "best_of": some(st.integers(0, 3)),
    },
)
tokenize_body = st.fixed_dictionaries(
    {},
    optional={
        "model": some(st.just("qwen3")),
        "prompt": some(odd_text),
        "messages": some(st.lists(message, max_size=3)),
        "add_special_tokens": some(st.booleans()),
        "add_generation_prompt": some(st.booleans()),
        "continue_final_message": some(st.booleans()),
        "tools": some(st.lists(tool, max_size=2)),
        "return_token_strs": some(st.booleans()),
        "chat_template_kwargs": some(st.dictionaries(text, json_value, max_size=2)),
    },
)
detokenize_body = st.fixed_dictionaries(
    {"tokens": some(st.lists(st.one_of(st.integers(0, 151700), ints), max_size=8))},
    optional={"model": some(st.just("qwen3"))},
)
PARSER_TEXT = st.one_of(
    odd_text,
    st.just("<think>a</think>b"),
    st.just('<tool_call>\n{"name": "x", "arguments": {"a": 1}}\n</tool_call>'),
    st.just('[TOOL_CALLS][{"name": "x", "arguments": {}}]'),
    st.just("<|python_tag|>{"),
)
reasoning_body = st.fixed_dictionaries(
    {"text": some(PARSER_TEXT)},
    optional={
        "reasoning_parser": some(st.sampled_from(["qwen3", "deepseek_r1", "gpt_oss", "nope", ""])),
        "chat_template_kwargs": some(st.dictionaries(text, json_value, max_size=2)),
        "prompt_in_reasoning": some(st.booleans()),
    },
)
function_call_body = st.fixed_dictionaries(
    {"text": some(PARSER_TEXT)},
    optional={
        "tool_call_parser": some(
            st.sampled_from(["hermes", "llama3_json", "mistral", "deepseek_v3", "nope", ""])
        ),
        "tools": some(st.lists(tool, max_size=2)),
    },
)


def encoded(shaped: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    """A body: the shaped request JSON-encoded, mostly; else broken in one of several ways."""

    def mutate(data: tuple[bytes, int, bytes]) -> bytes:
        body, at, junk = data
        at = min(at, len(body))
        return body[:at] + junk + body[at:]

    as_json = shaped.map(lambda v: json.dumps(v, ensure_ascii=False).encode())
    return st.one_of(
        as_json,
        as_json,
        as_json,
        as_json,
        json_value.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.tuples(
            as_json, st.integers(0, 400), st.sampled_from([b"\xff", b"\xc3", b"\x00", b"}"])
        ).map(mutate),
        as_json.map(lambda b: b[: len(b) // 2]),
        st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    )


ENDPOINTS: dict[str, st.SearchStrategy[bytes]] = {
    "/v1/chat/completions": encoded(chat_body),
    "/v1/completions": encoded(completion_body),
    "/v1/tokenize": encoded(tokenize_body),
    "/v1/detokenize": encoded(detokenize_body),
    "/parse/reasoning": encoded(reasoning_body),
    "/parse/function_call": encoded(function_call_body),
}


# -- the gateway under test --------------------------------------------------------------------
class Client:
    """Keep-alive HTTP/1.1 with the standard library: cheap enough for tens of thousands of
    requests, and it reads chunked (streamed) bodies to their end."""

    def __init__(self, address: str) -> None:
        self._host, port = address.rsplit(":", 1)
        self._port = int(port)
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
            try:
                self._conn.request("POST", path, body, {"content-type": "application/json"})
                response = self._conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed a kept-alive connection between requests: one retry.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Target:
    def __init__(self, engine: Proc, gateway: Proc) -> None:
        self.engine, self.gateway = engine, gateway
        self.base = f"http://{gateway.address}"
        self.client = Client(gateway.address)
        self.pid = int(httpx.get(f"{self.base}/health", timeout=10).json()["pid"])
        self.baseline_rss = 0
        self.baseline_tasks = 0.0

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def tasks(self) -> float:
        for line in httpx.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith("herdsman_event_loop_tasks "):
                return float(line.split()[1])
        raise AssertionError("no task gauge")

    def check(self, path: str, body: bytes) -> None:
        status, data = self.client.post(path, body)
        assert status < 500, (status, data[:500], body[:500])
        if status == 200 and data.startswith(b"data: "):
            assert data.rstrip().endswith(b"data: [DONE]"), data[-300:]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    # Zero-latency engine with a short context: every generation is bounded and quick.
    engine = start_sim(
        QWEN3,
        "vllm",
        "--ttft-base-ms",
        "0",
        "--prefill-ms-per-1k",
        "0",
        "--itl-base-ms",
        "0",
        "--itl-per-running-ms",
        "0",
        "--tokens-per-message",
        "8",
        "--max-model-len",
        "1024",
        "--eos-after",
        "6",
    )
    gateway = start_gateway(
        engine.address,
        extra=("--model-path", str(QWEN3), "--workers", "1", "--no-warm-spare"),
    )
    target = Target(engine, gateway)
    try:
        # Warm up every path once per endpoint kind before the baseline is taken.
        warm = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(200):
            target.check("/v1/chat/completions", json.dumps({**warm, "max_tokens": 3}).encode())
            target.check(
                "/v1/chat/completions",
                json.dumps({**warm, "max_tokens": 3, "stream": True}).encode(),
            )
            target.check("/v1/tokenize", b'{"prompt": "hi"}')
        target.baseline_rss = target.rss()
        target.baseline_tasks = target.tasks()
        yield target
    finally:
        target.client.close()
        gateway.stop()
        engine.stop()


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_no_body_gets_a_5xx(target: Target, path: str) -> None:
    sent: list[bytes] = []

    @FUZZ
    @given(body=ENDPOINTS[path])
    def run(body: bytes) -> None:
        target.check(path, body)
        sent.append(body)

    run()
    # Hypothesis may stop early when it runs out of new inputs, and repeats small ones: count
    # what was really sent, and that most of it was new.
    distinct = len(set(sent))
    assert len(sent) >= EXAMPLES, f"only {len(sent)} bodies were sent"
    assert distinct >= EXAMPLES * 0.8, f"only {distinct} distinct bodies were sent"


def test_memory_and_tasks_stay_flat(target: Target) -> None:
    """Run after the fuzzing (same module): whatever it did left nothing behind."""
    assert target.gateway.process.poll() is None
    assert httpx.get(f"{target.base}/health", timeout=10).status_code == 200
    # Tasks: the background tasks of an idle process, nothing per request.
    assert target.tasks() <= target.baseline_tasks + 2
    # Memory: allocator slack, not growth per request (64 MB over ~60,000 requests would be
    # about 1 KB each; a leak of anything request-sized shows far above it).
    grown = target.rss() - target.baseline_rss
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
