"""The differential tier: the same tiny model served twice, the same requests sent to both.

One side is vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``), the reference. The
other is vLLM's gRPC servicer with herdsman in front, which does the tokenization, chat template,
detokenization, stop strings, logprob rendering and n > 1 itself. Both engines are the same
build with the same weights, dtype and seed, so greedy and seeded outputs must be identical.

Requests go out through the official ``openai`` SDK (vLLM's extensions in ``extra_body``), one
pair at a time so that no batching changes a float (logprobs compare to 1e-4); ids, text,
finish reasons, stop reasons and usage compare exactly. Hypothesis generates most requests
(derandomized: the same requests on every run); targeted tests cover what random requests hit
rarely (stop strings taken from the actual output, stop ids, echo, tools, special tokens).

The model folder is the conftest's tiny Llama with a Llama 3.1-style chat template (tools,
tool calls, tool results, ``date_string``): the Llama 3.0 template of the bundled tokenizer
ignores tools altogether.

Every difference is either herdsman's bug or vLLM's. Known ones are classified narrowly
(``classify``) and asserted by their own tests, so the generated tests stay green while those
still fail until the fix lands; vLLM's bugs are in ``EXPECTED_VLLM_DIFFERENCES``. The write-up:
docs/fidelity.md, "Differential tier".
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.conftest import LLAMA3
from tokenizers import Tokenizer

from .conftest import (
    OPENAI_SERVER,
    SERVED_NAME,
    Gateway,
    VllmServer,
    engine_port,
    launch_vllm,
    openai_ready,
    start_gateway_logged,
    vllm_argv,
    vllm_env,
    wait_vllm_ready,
)

TIMEOUT = 120.0
GENERATION_DEFAULTS = {"repetition_penalty": 1.1, "top_k": 40, "top_p": 0.9}
LOGPROB_TOL = 1e-4
# Llama 3 special ids: BOS, <|start_header_id|>, <|end_header_id|>, <|eot_id|>, a reserved one.
BOS, START_HEADER, END_HEADER, EOT, RESERVED = 128000, 128006, 128007, 128009, 128010
VOCAB = 128256

# A Llama 3.1-style template (the shape of Meta's): tools in the first user message by default,
# tool call arguments through ``tojson``, tool results as ``ipython`` messages. Content is read
# as a string, so vLLM joins text parts with newlines ("string" content format) as herdsman does;
# a template that loops over content parts gets the parts from vLLM (findings: F6).
TOOL_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions.\n\n" }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and tools is not none %}
    {%- set first_user_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, respond with a JSON function call.\n\n" }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
    {{- first_user_message + "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
        {{- message['content'] | trim }}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- for call in message.tool_calls %}
            {%- set tool_call = call.function %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}<|eot_id|>" }}
        {%- endfor %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {{- { "output": message.content } | tojson }}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"""  # noqa: E501

# vLLM's own bugs: differences that stay, each (kind, request, path prefix, reason). Requests
# are matched exactly; a listed difference that stops happening fails the test that lists it.
EXPECTED_VLLM_DIFFERENCES: list[tuple[str, dict[str, Any], str, str]] = []


# --- the two servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's tiny Llama, its chat template swapped for the tool-capable one. The weights
    are the same, so the session's gRPC engine (which never renders a template) serves it."""
    out = tmp_path_factory.mktemp("tiny-llama-tools")
    for item in tiny_model.iterdir():
        shutil.copyfile(item, out / item.name)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TOOL_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    # Sampling defaults, as published models have them (Qwen2.5-VL's repetition_penalty 1.05,
    # Qwen3's top_k/top_p): vLLM's server applies them to requests that leave them unset, and
    # so must herdsman (its engine's servicer does not). Every request here sets temperature.
    generation_path = out / "generation_config.json"
    generation = json.loads(generation_path.read_text())
    generation.update(GENERATION_DEFAULTS)
    generation_path.write_text(json.dumps(generation, indent=2))
    return out


@pytest.fixture(scope="module")
def vllm_gateway(
    vllm_server: VllmServer, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """herdsman (native transport: test_vllm.py covers both) with the tool template."""
    log = tmp_path_factory.mktemp("gateway-differential") / "gateway.log"
    gateway = start_gateway_logged(
        vllm_server.address, log, "--model-path", str(tools_model), "--grpc-transport", "native"
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def vllm_openai_launched(
    vllm_python: Path, tools_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """vLLM's OpenAI server, launched (not yet ready: it loads while herdsman's side starts)."""
    log = tmp_path_factory.mktemp("vllm-openai-log") / "vllm-openai.log"
    port = engine_port()
    argv = vllm_argv(OPENAI_SERVER, vllm_python, tools_model, SERVED_NAME, port)
    server = launch_vllm(argv, log, f"127.0.0.1:{port}", vllm_env())
    yield server
    server.stop()


@dataclass
class Pair:
    """The reference (vLLM's OpenAI server) and herdsman in front of vLLM's gRPC servicer."""

    vllm_base: str
    herdsman_base: str
    vllm: openai.OpenAI
    herdsman: openai.OpenAI
    pool: ThreadPoolExecutor

    def both(self, call: Callable[[openai.OpenAI, str], Any]) -> tuple[Any, Any]:
        """``call(client, base_url)`` on both sides at once: (vLLM's, herdsman's)."""
        ours = self.pool.submit(call, self.herdsman, self.herdsman_base)
        return call(self.vllm, self.vllm_base), ours.result()


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Both sides, ready. ``HERDSMAN_DIFFERENTIAL_URLS=VLLM_URL,HERDSMAN_URL`` compares two
    servers already running instead (for work on this module; nothing is started then)."""
    given_urls = os.environ.get("HERDSMAN_DIFFERENTIAL_URLS")
    if given_urls:
        vllm_base, herdsman_base = given_urls.split(",")
    else:
        server: VllmServer = request.getfixturevalue("vllm_openai_launched")
        # herdsman's side (the session's gRPC engine, a gateway) starts while it loads.
        engine: VllmServer = request.getfixturevalue("vllm_server")
        gateway: Gateway = request.getfixturevalue("vllm_gateway")
        wait_vllm_ready(server, openai_ready)
        STATS.startup = (server.startup_seconds, engine.startup_seconds)
        vllm_base, herdsman_base = f"http://{server.address}", f"http://{gateway.address}"
    started = time.monotonic()

    def client(base: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=TIMEOUT)

    with ThreadPoolExecutor(2) as pool:
        yield Pair(vllm_base, herdsman_base, client(vllm_base), client(herdsman_base), pool)
    STATS.seconds = time.monotonic() - started
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + STATS.summary(), file=sys.stderr)


# --- requests, normalised -----------------------------------------------------------------------

# What the SDK takes as arguments; everything else goes in extra_body (vLLM's extensions).
_COMMON_ARGS = ("frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n")
_COMMON_ARGS += ("presence_penalty", "seed", "stop", "stream", "stream_options", "temperature")
_COMMON_ARGS += ("top_p", "user")
CHAT_ARGS = frozenset(
    (*_COMMON_ARGS, "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice")
)
COMPLETION_ARGS = frozenset((*_COMMON_ARGS, "prompt", "echo", "suffix"))


def send(client: openai.OpenAI, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request through the SDK, its answer normalised for comparison."""
    known = CHAT_ARGS if kind == "chat" else COMPLETION_ARGS
    args = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    try:
        answer = create(model=SERVED_NAME, **args, extra_body=extra or None)
        if body.get("stream"):
            return _stream_result(kind, body, [chunk.model_dump() for chunk in answer])
        return _result(kind, body, answer.model_dump())
    except openai.APIStatusError as exc:
        return {"error": exc.status_code}
    except openai.APIError as exc:  # an error event in the middle of a stream
        return {"stream_error": str(exc)}


def _usage(usage: dict[str, Any] | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _chat_logprobs(logprobs: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if logprobs is None:
        return None
    return [
        {
            "token": e["token"],
            "bytes": e["bytes"],
            "logprob": e["logprob"],
            "top": [(t["token"], t["bytes"], t["logprob"]) for t in e["top_logprobs"]],
        }
        for e in logprobs["content"] or []
    ]


def _completion_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {k: logprobs.get(k) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def _extras(body: dict[str, Any], choice: dict[str, Any], out: dict[str, Any]) -> None:
    if body.get("return_token_ids"):
        out["token_ids"] = choice.get("token_ids")
    if body.get("prompt_logprobs") is not None:
        out["prompt_logprobs"] = choice.get("prompt_logprobs")


def _result(kind: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    for choice in answer["choices"]:
        if kind == "chat":
            message = choice["message"]
            out = {
                "text": message.get("content"),
                "tool_calls": message.get("tool_calls") or None,
                "logprobs": _chat_logprobs(choice.get("logprobs")),
            }
        else:
            out = {
                "text": choice["text"],
                "logprobs": _completion_logprobs(choice.get("logprobs")),
            }
            if body.get("prompt_logprobs") is not None:
                out["prompt_logprobs"] = choice.get("prompt_logprobs")
        out["finish_reason"] = choice["finish_reason"]
        out["stop_reason"] = choice.get("stop_reason")
        _extras(body, choice, out)
        choices[choice["index"]] = out
    result: dict[str, Any] = {"choices": choices, "usage": _usage(answer.get("usage"))}
    if body.get("return_token_ids"):
        ids = answer.get("prompt_token_ids")
        if kind == "completion":
            ids = [c.get("prompt_token_ids") for c in answer["choices"]]
        result["prompt_token_ids"] = ids
    if kind == "chat" and body.get("prompt_logprobs") is not None:
        result["prompt_logprobs"] = answer.get("prompt_logprobs")
    return result


def _stream_result(kind: str, body: dict[str, Any], chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream as one answer: each choice's deltas concatenated; shape faults become fields."""
    choices: dict[int, dict[str, Any]] = {}
    usages = [c["usage"] for c in chunks if c.get("usage")]
    faults: list[str] = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            out = choices.setdefault(
                choice["index"],
                {"text": "", "logprobs": None, "finish_reason": None, "stop_reason": None},
            )
            if kind == "chat":
                delta = choice["delta"]
                out["text"] += delta.get("content") or ""
                if delta.get("tool_calls"):
                    out.setdefault("tool_calls", []).extend(delta["tool_calls"])
                lp = _chat_logprobs(choice.get("logprobs"))
                if lp is not None:
                    out["logprobs"] = (out["logprobs"] or []) + lp
            else:
                out["text"] += choice.get("text") or ""
                lp = _completion_logprobs(choice.get("logprobs"))
                if lp is not None:
                    merged = out["logprobs"] or {k: [] for k in lp}
                    for key, values in lp.items():
                        merged[key] = merged[key] + list(values or [])
                    out["logprobs"] = merged
            if choice.get("finish_reason"):
                if out["finish_reason"] is not None:
                    faults.append(f"choice {choice['index']}: a second finish_reason")
                out["finish_reason"] = choice["finish_reason"]
                out["stop_reason"] = choice.get("stop_reason")
            if body.get("return_token_ids") and choice.get("token_ids"):
                out["token_ids"] = out.get("token_ids", []) + list(choice["token_ids"])
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if include_usage and (
        len(usages) != 1 or not chunks[-1].get("usage") or chunks[-1]["choices"] != []
    ):
        faults.append(f"{len(usages)} usage chunks, the last chunk: {chunks[-1]}")
    if not include_usage and usages:
        faults.append("usage without include_usage")
    for out in choices.values():
        if kind == "chat" and "tool_calls" not in out:
            out["tool_calls"] = None
    return {
        "choices": choices,
        "usage": _usage(usages[-1]) if usages else None,
        "stream_faults": faults,
    }


# --- comparison ---------------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def differences(ref: Any, ours: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, vLLM's, herdsman's) for each difference; floats within LOGPROB_TOL are equal."""
    if isinstance(ref, dict) and isinstance(ours, dict):
        for key in sorted(set(ref) | set(ours), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in ref or key not in ours:
                yield sub, ref.get(key, "<absent>"), ours.get(key, "<absent>")
            else:
                yield from differences(ref[key], ours[key], sub)
    elif isinstance(ref, (list, tuple)) and isinstance(ours, (list, tuple)):
        if len(ref) != len(ours):
            yield f"{path}.len", len(ref), len(ours)
        for i, (a, b) in enumerate(zip(ref, ours, strict=False)):
            yield from differences(a, b, f"{path}[{i}]")
    elif (
        _is_number(ref) and _is_number(ours) and (isinstance(ref, float) or isinstance(ours, float))
    ):
        if not (ref == ours or math.isclose(ref, ours, rel_tol=0, abs_tol=LOGPROB_TOL)):
            yield path, ref, ours
    elif ref != ours:
        yield path, ref, ours


FFFD = "\ufffd"


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0, abs_tol=LOGPROB_TOL)


def _explain_logprobs(kind: str, ref: Any, ours: Any) -> set[str] | None:
    """The known causes that together explain how two choices' logprobs differ, or None when
    something else differs. Values always compare; token text only where herdsman shows U+FFFD
    (known bug b: vLLM decodes such a token with up to 4 preceding sampled tokens as context)."""
    if ref is None or ours is None:
        return None
    causes: set[str] = set()
    if kind == "chat":
        if len(ref) != len(ours):
            return None
        for a, b in zip(ref, ours, strict=True):
            pairs = [
                ((a["token"], a["bytes"], a["logprob"]), (b["token"], b["bytes"], b["logprob"]))
            ]
            if len(a["top"]) != len(b["top"]):
                return None
            pairs += list(zip(a["top"], b["top"], strict=True))
            for (ta, ba, la), (tb, bb, lb) in pairs:
                if not _close(la, lb):
                    return None
                if (ta, ba) != (tb, bb):
                    if FFFD not in tb:
                        return None
                    causes.add(KNOWN_B)
        return causes
    if len(ref["tokens"]) != len(ours["tokens"]):
        return None
    if list(differences(ref["token_logprobs"], ours["token_logprobs"])):
        return None
    for a, b in zip(ref["tokens"], ours["tokens"], strict=True):
        if a != b:
            if FFFD not in b:
                return None
            causes.add(KNOWN_B)
    for a, b in zip(ref["top_logprobs"], ours["top_logprobs"], strict=True):
        if (a is None) != (b is None):
            return None
        if a is None or not list(differences(a, b)):
            continue
        # Entries herdsman shows with U+FFFD, and vLLM's of the same value, leave the comparison
        # (tokens shown alike collapse into one key of herdsman's dict).
        partial = [v for k, v in b.items() if FFFD in k]
        if partial:
            causes.add(KNOWN_B)
        a = {k: v for k, v in a.items() if k in b or not any(_close(v, p) for p in partial)}
        b = {k: v for k, v in b.items() if FFFD not in k}
        if not list(differences(a, b)):
            continue
        # vLLM lists the sampled token plus `logprobs` alternatives; herdsman one fewer.
        if len(a) == len(b) + 1 and all(k in a and _close(a[k], v) for k, v in b.items()):
            causes.add(GAP_TOP)
            continue
        if partial and len(a) > len(b) and all(k in a and _close(a[k], v) for k, v in b.items()):
            causes.add(GAP_TOP)  # a collapsed U+FFFD key hides which one is missing
            continue
        # vLLM's own dict collapsed the prompt token and an alternative that both show as ""
        # (pieces of characters): the alternative herdsman lacks overwrote the shared key.
        if set(a) == set(b) and "" in b and all(_close(a[k], b[k]) for k in b if k):
            causes.add(GAP_TOP)
            continue
        return None
    if ref["text_offset"] != ours["text_offset"] and KNOWN_B not in causes:
        return None
    return causes


def _head(lp: dict[str, Any], size: int, tail: bool = False) -> dict[str, Any]:
    keys = ("tokens", "token_logprobs", "top_logprobs")
    return {k: lp[k][size:] if tail else lp[k][:size] for k in keys} | {"text_offset": []}


def _prompt_logprobs_dropped(comparison: Comparison, index: int) -> set[str] | None:
    """vLLM's choice lacks the echoed prompt's logprobs that herdsman shows, and herdsman's are
    another vLLM choice's. AsyncLLM coalesces queued outputs of an n > 1 request when its
    consumer lags, and ``RequestOutput.add`` (vllm/outputs.py) merges the completions but keeps
    the first output's ``prompt_logprobs``: the choice whose first output was merged into
    another's loses them (the server echoes ``res.prompt_logprobs``). The prompt, and so its
    logprobs, is the same for every choice; herdsman shows them on each."""
    if comparison.kind != "completion" or not comparison.body.get("echo"):
        return None
    choices = comparison.ref["choices"]
    ref, ours = choices[index]["logprobs"], comparison.ours["choices"][index]["logprobs"]
    if ref is None or ours is None:
        return None
    size = len(ours["tokens"]) - len(ref["tokens"])
    tail = _explain_logprobs("completion", _head(ref, 0, tail=True), _head(ours, size, tail=True))
    if size <= 0 or tail is None:
        return None
    head = _head(ours, size)
    for other, choice in choices.items():
        lp = choice["logprobs"]
        if other == index or not lp:
            continue
        if _explain_logprobs("completion", _head(lp, size), head) is not None:
            return {VLLM_BUG}
    return None


@functools.cache
def _decoded_prompt(ids: tuple[int, ...]) -> str:
    # The tiny model's tokenizer is the bundled Llama 3 one (make_tiny_llama.py copies it).
    return Tokenizer.from_file(str(LLAMA3 / "tokenizer.json")).decode(list(ids))


def _prompt_repeated(a: str, b: str, body: dict[str, Any]) -> bool:
    """vLLM primes its detokenizer with ``DecodeStream(ids=prompt)``; when the prompt ends inside
    a character, tokenizers' stream returns the whole prompt's text with the first output
    token (tokenizers 0.22, ``step_decode_stream`` keeps its prefix at the start while the
    text ends in U+FFFD). vLLM's text is then herdsman's with the prompt's text before it."""
    prompt = body.get("prompt")
    if not (isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt)):
        return False
    text = _decoded_prompt(tuple(prompt))
    if not text.endswith(FFFD):
        return False
    if body.get("echo"):
        if not (a.startswith(text) and b.startswith(text)):
            return False
        a, b = a[len(text) :], b[len(text) :]
    return a == text.rstrip(FFFD) + b


def _explain_text(ref: dict[str, Any], ours: dict[str, Any], body: dict[str, Any]) -> str:
    """A known cause for two choices' texts differing, or ""."""
    a, b = ref["text"] or "", ours["text"] or ""
    if _prompt_repeated(a, b, body):
        return VLLM_BUG
    if not b.startswith(a) or a == b:
        return ""
    tail = b[len(a) :]
    if set(tail) == {FFFD} and not isinstance(ref["stop_reason"], str):
        return GAP_TAIL
    stopped_on_id = ref["finish_reason"] == "stop" and not isinstance(ref["stop_reason"], str)
    if stopped_on_id and not body.get("include_stop_str_in_output"):
        return GAP_STOP_ID
    return ""


@dataclass
class Comparison:
    kind: str
    body: dict[str, Any]
    ref: dict[str, Any]
    ours: dict[str, Any]
    # category -> [(path, vLLM's, herdsman's)]; "" is an unexplained difference
    found: dict[str, list[tuple[str, Any, Any]]] = field(default_factory=dict)

    @property
    def unexplained(self) -> list[tuple[str, Any, Any]]:
        return self.found.get("", [])

    def choices(self) -> list[dict[str, Any]]:
        return list(self.ref.get("choices", {}).values())

    def describe(self) -> str:
        # Differences other than missing alternatives first: they are the telling ones.
        found = {
            k: sorted(v, key=lambda d: "<absent>" in (d[1], d[2]))[:40]
            for k, v in self.found.items()
        }
        return json.dumps(
            {"kind": self.kind, "request": self.body, "differences": found},
            ensure_ascii=False,
            default=str,
        )[:6000]


KNOWN_A = "known (a): completion_tokens after a stop string"
KNOWN_B = "known (b): logprob token text of partial UTF-8 tokens"
KNOWN_C = "known (c): tool call arguments not json-parsed before templating"
GAP_TOP = "herdsman: completions top_logprobs one alternative short"
GAP_TAIL = "herdsman: an unfinished last character shown as U+FFFD"
GAP_STOP_ID = "herdsman: the text of the stop token id shown"
GAP_IGNORED = "herdsman: request field ignored"
VLLM_BUG = "vLLM bug (expected difference)"

# Request fields herdsman does not implement (it ignores unknown fields): what is compared of
# them is asserted in their own tests, and findings explain each.
IGNORED_FIELDS = ("return_token_ids", "prompt_logprobs")


def classify(comparison: Comparison) -> None:
    ref, ours, body = comparison.ref, comparison.ours, comparison.body
    found = comparison.found
    if "error" in ref or "error" in ours:
        found.setdefault("", []).extend(differences(ref, ours))
        return
    stopped_on_string = any(
        c["finish_reason"] == "stop" and isinstance(c["stop_reason"], str)
        for c in ref["choices"].values()
    )
    for path, a, b in differences(ref, ours):
        top = path.split(".")[0]
        category = ""
        if path in ("usage.completion_tokens", "usage.total_tokens"):
            if stopped_on_string and _is_number(a) and _is_number(b) and b > a:
                category = KNOWN_A
        elif top == "choices" and ".logprobs" in path:
            index = int(path.split(".")[1].split("[")[0])
            causes = _explain_logprobs(
                comparison.kind,
                ref["choices"][index]["logprobs"],
                ours["choices"][index]["logprobs"],
            ) or _prompt_logprobs_dropped(comparison, index)
            if causes:
                for cause in sorted(causes)[1:]:
                    found.setdefault(cause, []).append((path, a, b))
                category = sorted(causes)[0]
        elif top == "choices" and path.endswith(".text"):
            index = int(path.split(".")[1])
            category = _explain_text(ref["choices"][index], ours["choices"][index], body)
        if not category and any(f in body for f in IGNORED_FIELDS):
            leaf = path.split(".")[-1].split("[")[0]
            if leaf in ("token_ids", "prompt_token_ids", "prompt_logprobs"):
                category = GAP_IGNORED
        if not category:
            for kind, request, prefix, _reason in EXPECTED_VLLM_DIFFERENCES:
                if kind == comparison.kind and request == body and path.startswith(prefix):
                    category = VLLM_BUG
        found.setdefault(category, []).append((path, a, b))


# --- the tally ----------------------------------------------------------------------------------


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    fields: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    facts: Counter[str] = field(default_factory=Counter)
    generated: Counter[str] = field(default_factory=Counter)
    startup: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    unexplained: list[str] = field(default_factory=list)

    def count(self, comparison: Comparison) -> None:
        body = comparison.body
        self.requests[f"{comparison.kind}{' stream' if body.get('stream') else ''}"] += 1
        for category, diffs in comparison.found.items():
            name = category or "UNEXPLAINED"
            self.categories[name] += 1
            if not category:
                self.unexplained.append(comparison.describe())
            for path, _, _ in diffs:
                leaf = ".".join(p.split("[")[0] for p in path.split(".")[2:4]) or path
                self.fields[f"{name}: {leaf}"] += 1
        if "error" in comparison.ref:
            self.facts["both rejected" if "error" in comparison.ours else "rejected"] += 1
            return
        for choice in comparison.choices():
            self.facts["choices"] += 1
            if choice.get("text"):
                self.facts["choices with text"] += 1
            if isinstance(choice["stop_reason"], str):
                self.facts["stopped on a stop string"] += 1
            elif isinstance(choice["stop_reason"], int):
                self.facts["stopped on a stop token id"] += 1
            elif choice["finish_reason"] == "stop":
                self.facts["stopped on EOS"] += 1
            lp = choice.get("logprobs")
            if lp:
                self.facts["logprob entries"] += (
                    len(lp) if isinstance(lp, list) else len(lp["tokens"])
                )
        if len(comparison.choices()) > 1:
            self.facts["requests with n > 1"] += 1

    def summary(self) -> str:
        lines = [
            f"differential tier: {sum(self.requests.values())} request pairs compared in "
            f"{self.seconds:.0f}s (vLLM OpenAI server ready in {self.startup[0]:.0f}s, "
            f"gRPC servicer in {self.startup[1]:.0f}s)",
            "  requests: " + ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())),
            "  generated: " + ", ".join(f"{k} {v}" for k, v in sorted(self.generated.items())),
            "  seen: " + ", ".join(f"{k} {v}" for k, v in sorted(self.facts.items())),
            "  requests with differences, by category:",
        ]
        lines += [f"    {v:5d}  {k}" for k, v in self.categories.most_common()] or ["    none"]
        lines.append("  differing fields:")
        lines += [f"    {v:5d}  {k}" for k, v in self.fields.most_common(30)] or ["    none"]
        return "\n".join(lines)


STATS = Stats()


def compare(pair: Pair, kind: str, body: dict[str, Any]) -> Comparison:
    ref, ours = pair.both(lambda client, _base: send(client, kind, body))
    if "stream_error" in ref and "stream_error" not in ours:
        # vLLM's server failing mid-stream is its own bug (seen: a streamed completion with
        # echo, logprobs and n=2 of a token-id prompt: KeyError on the prompt's first id, and
        # choices that differ from its own non-failing run after it); there is no answer of
        # its to compare with. Counted, and shown in the summary.
        comparison = Comparison(kind, body, ref, ours)
        comparison.found[VLLM_BUG] = [("stream", ref["stream_error"], "<answered>")]
        STATS.facts["vLLM's server failed mid-stream (not compared)"] += 1
        STATS.categories[VLLM_BUG] += 1
        return comparison
    comparison = Comparison(kind, body, ref, ours)
    classify(comparison)
    STATS.count(comparison)
    return comparison


def tokenize(pair: Pair, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    def call(_client: openai.OpenAI, base: str) -> dict[str, Any]:
        response = httpx.post(f"{base}/tokenize", json={"model": SERVED_NAME, **body}, timeout=60)
        if response.status_code != 200:
            return {"error": response.status_code}
        return response.json()

    ref, ours = pair.both(call)
    STATS.requests["tokenize"] += 1
    return ref, ours


def assert_same(comparison: Comparison, *allowed: str) -> None:
    """No difference except those of the named categories (and GAP_TAIL, which any answer cut
    by max_tokens may show: test_unfinished_last_character asserts it)."""
    other = {k: v for k, v in comparison.found.items() if k not in (*allowed, GAP_TAIL)}
    assert not other, comparison.describe()


# --- generated requests -------------------------------------------------------------------------

WORDS = [
    "hello", " world", "The quick brown fox", " jumps", "héllo wörld", "naïve café", "🚀", "👍🏽",
    "👩‍👩‍👧", "🇫🇷", "日本語のテキスト", "中文字符", "한국어", "Ελληνικά", "Привет", "مرحبا", "ﬁ",
    "e\u0301", "\u00a0", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\n", "\n\n", "  ", "\t", "1234", '{"a": [1, 2]}',
    "<|eot_id|>", "<|start_header_id|>", "</s>", "\\n", "'\"", "ё", "…", "\u200b",
]  # fmt: skip
text_st = st.lists(
    st.one_of(
        st.sampled_from(WORDS),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=5),
    ),
    min_size=1,
    max_size=6,
).map("".join)
# Short pieces that random output contains often, so that many stop strings really match.
STOP_POOL = [" ", "e", "a", "o", "n", "t", "in", "er", ".", ",", "(", "_", "\n", "的", " S", "й"]
stop_st = st.lists(
    st.one_of(st.sampled_from(STOP_POOL), st.text(min_size=1, max_size=2)), min_size=1, max_size=3
)
# Ordinary ids and special ones (skip_special_tokens then matters).
bias_id_st = st.one_of(
    st.integers(0, 127999), st.sampled_from([START_HEADER, END_HEADER, RESERVED, 128100, BOS])
)


@st.composite
def sampling_st(draw: st.DrawFn, *, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": draw(st.integers(1, 24))}
    seeded = draw(st.booleans())
    if seeded:
        body["temperature"] = draw(st.sampled_from([0.3, 0.8, 1.0, 1.5]))
        body["seed"] = draw(st.integers(0, 2**31 - 1))
        body["n"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            body["top_p"] = draw(st.sampled_from([0.3, 0.9, 1.0]))
        if draw(st.booleans()):
            body["top_k"] = draw(st.sampled_from([-1, 1, 5, 50]))
        if draw(st.booleans()):
            body["min_p"] = draw(st.sampled_from([0.0, 0.05, 0.2]))
    else:
        body["temperature"] = 0
    for name, values in (
        ("presence_penalty", [-1.5, 0.5, 2.0]),
        ("frequency_penalty", [-0.5, 1.0, 2.0]),
        ("repetition_penalty", [0.7, 1.3, 2.0]),
    ):
        if draw(st.integers(0, 4)) == 0:
            body[name] = draw(st.sampled_from(values))
    if draw(st.integers(0, 3)) == 0:
        bias = draw(
            st.dictionaries(bias_id_st, st.sampled_from([-100, -5, 5, 30, 100]), max_size=3)
        )
        body["logit_bias"] = {str(k): v for k, v in bias.items()}
    if draw(st.booleans()):
        stops = draw(stop_st)
        body["stop"] = stops[0] if len(stops) == 1 and draw(st.booleans()) else stops
        if draw(st.booleans()):
            body["include_stop_str_in_output"] = True
    if draw(st.integers(0, 3)) == 0:
        body["min_tokens"] = draw(st.integers(0, body["max_tokens"]))
    if draw(st.integers(0, 4)) == 0:
        body["ignore_eos"] = True
    if draw(st.integers(0, 3)) == 0:
        body["skip_special_tokens"] = draw(st.booleans())
        body["spaces_between_special_tokens"] = draw(st.booleans())
    if draw(st.booleans()):
        body["stream"] = True
        if draw(st.integers(0, 3)):
            body["stream_options"] = {"include_usage": True}
    return body


content_st = st.one_of(
    text_st,
    st.lists(text_st.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3),
)


@st.composite
def messages_st(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bool]:
    """A conversation, and whether it ends with an assistant message to continue."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(content_st)})
    turns = draw(st.integers(1, 3))
    for turn in range(turns):
        messages.append({"role": "user", "content": draw(content_st)})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": draw(text_st)})
    cont = draw(st.integers(0, 4)) == 0
    if cont:
        messages.append({"role": "assistant", "content": draw(text_st)})
    return messages, cont


@st.composite
def chat_st(draw: st.DrawFn) -> dict[str, Any]:
    messages, cont = draw(messages_st())
    body = {"messages": messages, **draw(sampling_st(chat=True))}
    if cont:
        body["add_generation_prompt"] = False
        body["continue_final_message"] = True
    if draw(st.booleans()):
        body["logprobs"] = True
        body["top_logprobs"] = draw(st.integers(0, 5))
    if draw(st.integers(0, 4)) == 0:
        body["chat_template_kwargs"] = {"date_string": draw(text_st)}
    return body


@st.composite
def completion_st(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 4)) == 0:
        prompt: Any = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12))
    else:
        prompt = draw(text_st)
    body = {"prompt": prompt, **draw(sampling_st(chat=False))}
    if draw(st.booleans()):
        body["logprobs"] = draw(st.integers(0, 5))
    if draw(st.integers(0, 3)) == 0:
        body["echo"] = True
    return body


GENERATED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)


def _run_generated(
    pair: Pair, kind: str, strategy: st.SearchStrategy[dict[str, Any]], examples: int
) -> list[Comparison]:
    """``examples`` generated requests, each sent to both sides; every comparison returned."""
    done: list[Comparison] = []

    @settings(GENERATED, max_examples=examples)
    @given(strategy)
    def run(body: dict[str, Any]) -> None:
        done.append(compare(pair, kind, body))

    run()
    STATS.generated[kind] += len(done)
    return done


def _report(comparisons: list[Comparison]) -> str:
    bad = [c for c in comparisons if c.unexplained]
    return f"{len(bad)} of {len(comparisons)} requests differ:\n" + "\n".join(
        c.describe() for c in bad[:8]
    )


def test_generated_chat(pair: Pair) -> None:
    comparisons = _run_generated(pair, "chat", chat_st(), 160)
    assert not any(c.unexplained for c in comparisons), _report(comparisons)
    # The comparisons were not empty: text, logprobs, stops and n > 1 all occurred.
    choices = [ch for c in comparisons if "error" not in c.ref for ch in c.choices()]
    assert sum(1 for ch in choices if ch["text"]) > len(choices) * 0.8
    assert sum(1 for ch in choices if isinstance(ch["stop_reason"], str)) >= 10
    assert sum(1 for ch in choices if ch["logprobs"]) >= 20
    assert sum(1 for c in comparisons if len(c.choices()) > 1) >= 10
    assert sum(1 for c in comparisons if c.body.get("stream")) >= 30


def test_generated_completions(pair: Pair) -> None:
    comparisons = _run_generated(pair, "completion", completion_st(), 160)
    assert not any(c.unexplained for c in comparisons), _report(comparisons)
    choices = [ch for c in comparisons if "error" not in c.ref for ch in c.choices()]
    assert sum(1 for ch in choices if ch["text"]) > len(choices) * 0.8
    assert sum(1 for ch in choices if isinstance(ch["stop_reason"], str)) >= 10
    assert sum(1 for ch in choices if ch["logprobs"] and ch["logprobs"]["tokens"]) >= 20


@st.composite
def tokenize_st(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        body: dict[str, Any] = {"prompt": draw(text_st)}
        if draw(st.booleans()):
            body["add_special_tokens"] = draw(st.booleans())
        return body
    messages, cont = draw(messages_st())
    body = {"messages": messages}
    if cont:
        body.update(add_generation_prompt=False, continue_final_message=True)
    elif draw(st.integers(0, 3)) == 0:
        body["add_generation_prompt"] = False
    if draw(st.integers(0, 3)) == 0:
        body["chat_template_kwargs"] = {
            "date_string": draw(text_st),
            "tools_in_user_message": draw(st.booleans()),
        }
    if draw(st.integers(0, 3)) == 0:
        body["tools"] = [WEATHER_TOOL]
    return body


def test_generated_tokenize(pair: Pair) -> None:
    """Prompt token ids: vLLM's /tokenize and herdsman's, for prompts and conversations."""
    differ: list[tuple[dict[str, Any], Any, Any]] = []
    compared = 0

    @settings(GENERATED, max_examples=200)
    @given(tokenize_st())
    def run(body: dict[str, Any]) -> None:
        nonlocal compared
        ref, ours = tokenize(pair, body)
        compared += 1
        assert "error" not in ref, (body, ref)
        if (ref.get("tokens"), ref.get("count")) != (ours.get("tokens"), ours.get("count")):
            differ.append((body, ref, ours))

    run()
    STATS.generated["tokenize"] += compared
    assert not differ, f"{len(differ)} of {compared} differ; first: {differ[:3]}"


# --- targeted: stop strings ---------------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hello! Tell me about héllo wörld 🚀 and 日本語."},
]
TEXT = "The quick brown fox jumps over"


def _greedy(pair: Pair, kind: str, max_tokens: int = 24) -> tuple[dict[str, Any], list[str]]:
    """The greedy answer (vLLM's) and its tokens' text, from a logprobs request."""
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0}
    if kind == "chat":
        body.update(messages=CHAT, logprobs=True)
    else:
        body.update(prompt=TEXT, logprobs=0)
    comparison = compare(pair, kind, body)
    assert_same(comparison, KNOWN_B, GAP_TOP)
    [choice] = comparison.choices()
    lp = choice["logprobs"]
    tokens = [e["token"] for e in lp] if kind == "chat" else lp["tokens"]
    assert choice["finish_reason"] == "length" and len(choice["text"]) > 20
    return choice, tokens


def _cut(text: str, stops: list[str], include: bool = False) -> str:
    """The answer vLLM gives for ``text`` and these stops: the stop string that is complete
    first wins; on a tie, the one listed first."""
    for end in range(1, len(text) + 1):
        for stop in stops:
            if text.endswith(stop, 0, end):
                return text[:end] if include else text[: end - len(stop)]
    return text


def _stop_cases(text: str, tokens: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """(name, stop fields, the text vLLM must answer) for stop strings in ``text``."""
    # Token boundaries in the text (up to the first token shown other than as its text: a piece
    # of a UTF-8 character).
    offsets, at = [], 0
    for token in tokens:
        if not token or FFFD in token or not text.startswith(token, at):
            break
        at += len(token)
        offsets.append(at)
    # A boundary between two tokens in the second half: the stop spans it.
    boundary = next(o for o in reversed(offsets) if 2 <= o <= len(text) - 2)
    mid, late = len(text) // 3, 2 * len(text) // 3
    stops: list[tuple[str, list[str], bool]] = [
        ("single", [text[mid : mid + 3]], False),
        ("spanning tokens", [text[boundary - 2 : boundary + 2]], False),
        ("at start", [text[:2]], False),
        ("several", [text[late : late + 2], text[mid : mid + 3], "\x00never"], False),
        ("absent", ["\x00never", "\x01"], False),
        ("include in output", [text[boundary - 2 : boundary + 2]], True),
        ("one character", [text[mid]], False),
    ]
    cases = []
    for name, strings, include in stops:
        fields: dict[str, Any] = {"stop": strings[0] if name == "single" else strings}
        if include:
            fields["include_stop_str_in_output"] = True
        cases.append((name, fields, _cut(text, strings, include)))
    return cases


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_stop_strings(pair: Pair, kind: str) -> None:
    """Stop strings taken from the greedy output itself, so they really occur."""
    full, tokens = _greedy(pair, kind)
    text = full["text"]
    stopped = 0
    for name, stop, expected in _stop_cases(text, tokens):
        for stream in (False, True):
            body: dict[str, Any] = {"max_tokens": 24, "temperature": 0, **stop}
            body.update({"messages": CHAT} if kind == "chat" else {"prompt": TEXT})
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            comparison = compare(pair, kind, body)
            assert_same(comparison, KNOWN_A)
            [choice] = comparison.choices()
            assert choice["text"] == expected, (name, stream, comparison.describe())
            if name != "absent":
                assert choice["finish_reason"] == "stop", (name, choice)
                assert isinstance(choice["stop_reason"], str)
                stopped += 1
    assert stopped == 12


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_stop_string_usage(pair: Pair, kind: str) -> None:
    """Known bug (a): after a stop string, usage counts the tokens up to the one that completed
    it (vLLM), not every token the engine made before the abort reached it."""
    full, tokens = _greedy(pair, kind)
    text = full["text"]
    failures = []
    for name, stop, _ in _stop_cases(text, tokens):
        for stream in (False, True):
            body: dict[str, Any] = {"max_tokens": 24, "temperature": 0, **stop, "stream": stream}
            body.update({"messages": CHAT} if kind == "chat" else {"prompt": TEXT})
            if stream:
                body["stream_options"] = {"include_usage": True}
            comparison = compare(pair, kind, body)
            if KNOWN_A in comparison.found:
                failures.append((name, stream, comparison.found[KNOWN_A]))
    assert not failures, failures


def test_stop_tie_goes_to_the_first_listed(pair: Pair) -> None:
    """Two stop strings completed by the same character: vLLM picks the one listed first."""
    full, _ = _greedy(pair, "completion")
    text = full["text"]
    # A character seen for the first time, with the two before it: both stops end on it.
    at = next(
        i
        for i in range(2, len(text))
        if text.find(text[i]) == i and text.find(text[i - 2 : i + 1]) == i - 2
    )
    long_stop, short_stop = text[at - 2 : at + 1], text[at]
    for stops in ([short_stop, long_stop], [long_stop, short_stop]):
        body = {"prompt": TEXT, "max_tokens": 24, "temperature": 0, "stop": stops}
        comparison = compare(pair, "completion", body)
        assert_same(comparison, KNOWN_A)
        [choice] = comparison.choices()
        assert choice["stop_reason"] == stops[0]


def test_min_tokens_defers_stop_strings(pair: Pair) -> None:
    """A stop string inside the first min_tokens tokens does not stop the generation."""
    full, tokens = _greedy(pair, "chat")
    text = full["text"]
    early = tokens[1][:2] if tokens[1].strip() else tokens[2][:2]
    for min_tokens in (0, 4, 12):
        for stream in (False, True):
            body = {
                "messages": CHAT,
                "max_tokens": 24,
                "temperature": 0,
                "stop": [early],
                "min_tokens": min_tokens,
                "stream": stream,
            }
            comparison = compare(pair, "chat", body)
            assert_same(comparison, KNOWN_A)
            [choice] = comparison.choices()
            assert choice["finish_reason"] == "stop" or text.count(early) == 1


# --- targeted: stop ids, EOS, lengths -----------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [False, True],
    ids=["whole", "stream"],
)
def test_stop_token_text_is_not_shown(pair: Pair, stream: bool) -> None:
    """vLLM leaves the text of the token that matched stop_token_ids (or EOS) out of the answer
    unless include_stop_str_in_output (findings: F1, fixed for whole answers in 2ee0c6a)."""
    ids = _vllm_output_ids(pair, {"messages": CHAT, "max_tokens": 16, "temperature": 0})
    body = {
        "messages": CHAT,
        "max_tokens": 16,
        "temperature": 0,
        "stop_token_ids": [ids[5]],
        "stream": stream,
    }
    comparison = compare(pair, "chat", body)
    assert comparison.choices()[0]["stop_reason"] == ids[5]
    assert GAP_STOP_ID not in comparison.found, comparison.describe()
    assert_same(comparison)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_unfinished_last_character(pair: Pair, stream: bool) -> None:
    """An answer cut by max_tokens inside a multi-byte character: vLLM's text ends before the
    character; herdsman's ended with U+FFFD until 2ee0c6a (findings: F2)."""
    cut = 0
    for max_tokens in range(1, 25):
        ids = _vllm_output_ids(pair, {"messages": CHAT, "max_tokens": max_tokens, "temperature": 0})
        text = httpx.post(
            f"{pair.vllm_base}/detokenize",
            json={"model": SERVED_NAME, "tokens": ids},
            timeout=TIMEOUT,
        ).json()["prompt"]
        if not text.endswith(FFFD):
            continue
        cut += 1
        body = {"messages": CHAT, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        comparison = compare(pair, "chat", body)
        assert GAP_TAIL not in comparison.found, comparison.describe()
    assert cut, "no answer ended inside a character: nothing was compared"


def _vllm_output_ids(pair: Pair, body: dict[str, Any]) -> list[int]:
    """The output ids of a chat answer, from vLLM (``return_token_ids``)."""
    body = {"model": SERVED_NAME, **body, "return_token_ids": True}
    answer = httpx.post(f"{pair.vllm_base}/v1/chat/completions", json=body, timeout=TIMEOUT)
    return answer.json()["choices"][0]["token_ids"]


def test_stop_token_ids_and_eos(pair: Pair) -> None:
    ids = _vllm_output_ids(pair, {"messages": CHAT, "max_tokens": 16, "temperature": 0})
    stop_id = ids[5]
    assert stop_id not in ids[:5]
    cases = [
        ({"stop_token_ids": [stop_id]}, "stop"),
        ({"stop_token_ids": [stop_id], "include_stop_str_in_output": True}, "stop"),
        ({"stop_token_ids": [stop_id], "min_tokens": 10}, None),
        # EOS made likely: it ends the answer, unless min_tokens or ignore_eos hold it off.
        ({"logit_bias": {str(EOT): 100}}, "stop"),
        ({"logit_bias": {str(EOT): 100}, "min_tokens": 3}, "stop"),
        ({"logit_bias": {str(EOT): 100}, "ignore_eos": True}, "length"),
        ({"logit_bias": {str(EOT): 100}, "ignore_eos": True, "skip_special_tokens": False}, None),
        ({"logit_bias": {str(EOT): 100}, "stop_token_ids": [EOT], "ignore_eos": True}, "stop"),
        ({"logit_bias": {str(EOT): 8}, "min_tokens": 2}, None),
    ]
    for extra, reason in cases:
        for stream in (False, True):
            body = {"messages": CHAT, "max_tokens": 16, "temperature": 0, **extra}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            comparison = compare(pair, "chat", body)
            assert_same(comparison, GAP_STOP_ID)
            [choice] = comparison.choices()
            if reason is not None:
                assert choice["finish_reason"] == reason, (extra, choice)
    # The stop id case did stop on the id (not on length).
    body = {"messages": CHAT, "max_tokens": 16, "temperature": 0, "stop_token_ids": [stop_id]}
    [choice] = compare(pair, "chat", body).choices()
    assert choice["stop_reason"] == stop_id


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_max_tokens(pair: Pair, kind: str) -> None:
    for max_tokens in (1, 2, 7, 24):
        body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0}
        body.update({"messages": CHAT} if kind == "chat" else {"prompt": TEXT})
        comparison = compare(pair, kind, body)
        assert_same(comparison)
        assert comparison.ref["usage"]["completion_tokens"] == max_tokens


# --- targeted: sampling -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_n_seeded(pair: Pair, kind: str) -> None:
    """Seeded sampling is the engine's: the same n choices on both sides, and they differ."""
    for seed, n, extra in ((7, 3, {}), (123, 4, {"top_k": 20}), (5, 2, {"top_p": 0.8})):
        for stream in (False, True):
            body: dict[str, Any] = {
                "max_tokens": 12,
                "temperature": 1.0,
                "seed": seed,
                "n": n,
                "stream": stream,
                **extra,
            }
            body.update({"messages": CHAT} if kind == "chat" else {"prompt": TEXT})
            if stream:
                body["stream_options"] = {"include_usage": True}
            comparison = compare(pair, kind, body)
            assert_same(comparison)
            texts = [c["text"] for c in comparison.choices()]
            assert len(texts) == n and len(set(texts)) == n, texts


def test_penalties_and_logit_bias(pair: Pair) -> None:
    variants: list[dict[str, Any]] = [
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"frequency_penalty": -2.0},
        {"repetition_penalty": 1.8},
        {"repetition_penalty": 0.5},
        {"presence_penalty": 1.0, "frequency_penalty": 1.0, "repetition_penalty": 1.2},
        {"logit_bias": {"1000": 100}},
        {"logit_bias": {"1000": 10, "2000": 10, "3000": -100}},
    ]
    base = compare(pair, "chat", {"messages": CHAT, "max_tokens": 24, "temperature": 0})
    texts = {base.choices()[0]["text"]}
    for extra in variants:
        body = {"messages": CHAT, "max_tokens": 24, "temperature": 0, "logprobs": True, **extra}
        comparison = compare(pair, "chat", body)
        assert_same(comparison, KNOWN_B)
        texts.add(comparison.choices()[0]["text"])
    assert len(texts) >= 4, "the penalties should change the greedy answer"


# --- targeted: logprobs -------------------------------------------------------------------------

UTF8_PROMPTS = [
    "🚀🚀🚀 👩‍👩‍👧 🇫🇷🇯🇵 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "日本語のテキストと中文字符和한국어",
    "ภาษาไทย ᠮᠣᠩᠭᠣᠯ ⠓⠑⠇⠇⠕ ꦗꦮ",
]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_logprobs(pair: Pair, kind: str) -> None:
    """Greedy logprobs: values, token text, bytes and top alternatives, streamed and not."""
    entries = 0
    for top in (0, 1, 5, 20):
        for stream in (False, True):
            body: dict[str, Any] = {"max_tokens": 16, "temperature": 0, "stream": stream}
            if kind == "chat":
                body.update(messages=CHAT, logprobs=True, top_logprobs=top)
            else:
                body.update(prompt=TEXT, logprobs=top)
            comparison = compare(pair, kind, body)
            assert_same(comparison, KNOWN_B, GAP_TOP, GAP_TAIL)
            [choice] = comparison.choices()
            lp = choice["logprobs"]
            entries += len(lp) if kind == "chat" else len(lp["tokens"])
    assert entries == 16 * 8


def _partial_tokens(result: dict[str, Any]) -> int:
    """How many logprob tokens (chosen or alternatives) are shown as "" or with U+FFFD."""
    shown: list[str] = []
    for choice in result["choices"].values():
        lp = choice["logprobs"]
        if isinstance(lp, list):
            shown += [e["token"] for e in lp] + [t[0] for e in lp for t in e["top"]]
        elif lp:
            shown += lp["tokens"] + [k for top in lp["top_logprobs"] if top for k in top]
    return sum(1 for token in shown if not token or FFFD in token)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_partial_utf8_logprob_tokens(pair: Pair, kind: str) -> None:
    """Known bug (b): tokens that are part of a UTF-8 character, as vLLM renders them."""
    partial = 0
    failures = []
    for prompt in UTF8_PROMPTS:
        for seed in range(4):
            body: dict[str, Any] = {"max_tokens": 24, "temperature": 1.0, "seed": seed}
            if kind == "chat":
                body.update(
                    messages=[{"role": "user", "content": prompt}], logprobs=True, top_logprobs=5
                )
            else:
                body.update(prompt=prompt, logprobs=5)
            comparison = compare(pair, kind, body)
            assert_same(comparison, KNOWN_B, GAP_TOP)
            partial += _partial_tokens(comparison.ref) + _partial_tokens(comparison.ours)
            if KNOWN_B in comparison.found:
                failures.append(comparison.found[KNOWN_B][:3])
    assert partial > 0, "no partial UTF-8 token came up: the test compared nothing special"
    assert not failures, f"{len(failures)} requests differ, e.g. {failures[:3]}"


def test_completion_top_logprobs_count(pair: Pair) -> None:
    """vLLM's completions list the sampled token plus ``logprobs`` alternatives (OpenAI's
    definition); herdsman listed one fewer until 2ee0c6a (findings: F3)."""
    found = 0
    for seed in range(3):
        body = {"prompt": TEXT, "max_tokens": 16, "temperature": 1.5, "seed": seed, "logprobs": 2}
        comparison = compare(pair, "completion", body)
        assert_same(comparison, GAP_TOP, KNOWN_B)
        found += GAP_TOP in comparison.found
    body = {"prompt": TEXT, "max_tokens": 4, "temperature": 0, "logprobs": 2, "echo": True}
    comparison = compare(pair, "completion", body)
    assert_same(comparison, GAP_TOP, KNOWN_B)
    found += GAP_TOP in comparison.found
    assert found == 0, "herdsman's completions top_logprobs miss an alternative (findings: F3)"


# --- targeted: echo, prompt logprobs, token ids -------------------------------------------------


def test_completion_echo(pair: Pair) -> None:
    for prompt in (TEXT, "héllo 🚀 日本", [BOS, 791, 4062, 14198, 39935]):
        for stream in (False, True):
            for logprobs in (None, 0):
                body: dict[str, Any] = {
                    "prompt": prompt,
                    "max_tokens": 6,
                    "temperature": 0,
                    "echo": True,
                    "stream": stream,
                }
                if logprobs is not None:
                    body["logprobs"] = logprobs
                comparison = compare(pair, "completion", body)
                assert_same(comparison, KNOWN_B, GAP_TOP, GAP_TAIL)
                [choice] = comparison.choices()
                if isinstance(prompt, str):
                    assert choice["text"].startswith(prompt)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_prompt_ending_inside_a_character(pair: Pair, stream: bool) -> None:
    """A token-id prompt whose last ids are the start of a character: the output is decoded as
    the prompt's continuation, as vLLM does (found by a CI run: [8192] answered " consumes"
    where vLLM says "\ufffd consumes"). A longer such prompt shows vLLM's own bug: its text
    repeats the prompt (``_prompt_repeated``)."""
    repeated = 0
    for prompt in ([8192], [301, 21314, 25259, 350, 15656, 23412, 151]):
        for echo in (False, True):
            body: dict[str, Any] = {
                "prompt": prompt,
                "max_tokens": 4,
                "temperature": 0,
                "echo": echo,
                "stream": stream,
            }
            comparison = compare(pair, "completion", body)
            if VLLM_BUG in comparison.found:
                repeated += 1
                assert len(prompt) > 1, comparison.describe()
            assert_same(comparison, VLLM_BUG)
            [choice] = comparison.ours["choices"].values()
            if not echo:
                assert choice["text"].startswith(FFFD), comparison.describe()
    assert repeated, "vLLM no longer repeats the prompt: _prompt_repeated can go"


@pytest.mark.xfail(strict=True, reason="herdsman F4: prompt_logprobs ignored")
def test_prompt_logprobs(pair: Pair) -> None:
    """``prompt_logprobs``: vLLM returns each prompt token's logprob; herdsman ignores the field
    (findings: F4)."""
    body = {"prompt": TEXT, "max_tokens": 3, "temperature": 0, "prompt_logprobs": 2}
    comparison = compare(pair, "completion", body)
    assert comparison.choices()[0]["prompt_logprobs"], "vLLM answers prompt_logprobs"
    assert_same(comparison, GAP_IGNORED)
    assert GAP_IGNORED not in comparison.found, comparison.describe()


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_return_token_ids(pair: Pair, kind: str) -> None:
    """``return_token_ids``: prompt and output ids in the answer (findings: F4; herdsman has it
    for non-streamed answers since e29d6fa)."""
    body: dict[str, Any] = {"max_tokens": 6, "temperature": 0, "return_token_ids": True}
    body.update({"messages": CHAT} if kind == "chat" else {"prompt": TEXT})
    comparison = compare(pair, kind, body)
    assert comparison.choices()[0]["token_ids"], "vLLM answers token_ids"
    assert_same(comparison, GAP_IGNORED)
    assert GAP_IGNORED not in comparison.found, comparison.describe()


# --- targeted: chat templates -------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city — météo, 天気",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def _prompt_ids(pair: Pair, body: dict[str, Any]) -> list[int]:
    """vLLM's /tokenize, asserted equal to herdsman's."""
    ref, ours = tokenize(pair, body)
    assert "error" not in ref, (body, ref)
    assert ours.get("tokens") == ref["tokens"], (body, ref, ours)
    return ref["tokens"]


def test_template_options(pair: Pair) -> None:
    """add_generation_prompt, continue_final_message, chat_template_kwargs, multi-part content."""
    parts = [{"type": "text", "text": " première "}, {"type": "text", "text": "部分 🚀 "}]
    cases: list[dict[str, Any]] = [
        {"messages": CHAT},
        {"messages": CHAT, "add_generation_prompt": False},
        {
            "messages": [*CHAT, {"role": "assistant", "content": "Sure, 日本"}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
        {"messages": CHAT, "chat_template_kwargs": {"date_string": "01 Jan 2031"}},
        {"messages": [{"role": "user", "content": parts}]},
        {"messages": [{"role": "system", "content": parts}, {"role": "user", "content": parts}]},
        {"messages": [*CHAT, {"role": "assistant", "content": parts}, CHAT[1]]},
        {"messages": [{"role": "user", "content": "a <|eot_id|> b <|start_header_id|>"}]},
    ]
    for case in cases:
        _prompt_ids(pair, case)
        comparison = compare(pair, "chat", {**case, "max_tokens": 8, "temperature": 0})
        assert_same(comparison)


def test_tools_in_the_prompt(pair: Pair) -> None:
    """Tools and tool results reach the template the same way (no tool parser on either side)."""
    user = {"role": "user", "content": "Weather in Paris? Quel temps à Paris ?"}
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22°C ☀"}
    cases: list[dict[str, Any]] = [
        {"messages": [user], "tools": [WEATHER_TOOL]},
        {
            "messages": [user],
            "tools": [WEATHER_TOOL],
            "chat_template_kwargs": {"tools_in_user_message": False},
        },
        {"messages": [CHAT[0], user, tool_result], "tools": [WEATHER_TOOL]},
    ]
    for case in cases:
        ids = _prompt_ids(pair, case)
        assert len(ids) > 100, "the tool definitions are in the prompt"
        comparison = compare(
            pair, "chat", {**case, "tool_choice": "none", "max_tokens": 8, "temperature": 0}
        )
        assert_same(comparison)


def test_assistant_tool_calls(pair: Pair) -> None:
    """Known bug (c): tool call arguments are a JSON string; vLLM parses them into an object
    before templating (``tojson`` then writes the object, not a quoted string)."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"messages": messages, "tools": [WEATHER_TOOL]}
    ref, ours = tokenize(pair, body)
    comparison = compare(
        pair, "chat", {**body, "tool_choice": "none", "max_tokens": 8, "temperature": 0}
    )
    first = next(
        (i for i, (a, b) in enumerate(zip(ref["tokens"], ours["tokens"], strict=False)) if a != b),
        None,
    )
    assert ref["tokens"] == ours["tokens"], f"{KNOWN_C}: prompt ids differ from position {first}"
    assert_same(comparison)


def test_special_tokens_in_output(pair: Pair) -> None:
    """Special tokens made likely by logit_bias: skip_special_tokens and
    spaces_between_special_tokens decide the text."""
    bias = {str(START_HEADER): 17, str(RESERVED): 17}
    for skip in (True, False):
        for spaces in (True, False):
            for stream in (False, True):
                body = {
                    "messages": CHAT,
                    "max_tokens": 12,
                    "temperature": 0,
                    "logit_bias": bias,
                    # The model's default (1.1) would penalise the prompt's header tokens.
                    "repetition_penalty": 1.0,
                    "skip_special_tokens": skip,
                    "spaces_between_special_tokens": spaces,
                    "stream": stream,
                    "logprobs": True,
                }
                comparison = compare(pair, "chat", body)
                assert_same(comparison, KNOWN_B)
                [choice] = comparison.choices()
                tokens = [e["token"] for e in choice["logprobs"]]
                assert "<|start_header_id|>" in tokens, "a special token was generated"
                assert any(not t.startswith("<|") for t in tokens), "and an ordinary one"
                assert ("<|start_header_id|>" in choice["text"]) is not skip


def test_tokenize_token_strs(pair: Pair) -> None:
    """``return_token_strs``: vLLM answers the vocabulary's token strings
    (``convert_ids_to_tokens``: byte-level, 'Ġ' for a space); herdsman decodes each id to text
    (findings: F5)."""
    body = {"prompt": "Hello héllo 🚀", "return_token_strs": True}
    ref, ours = tokenize(pair, body)
    assert ref["tokens"] == ours["tokens"]
    assert ref["token_strs"] == ours["token_strs"]


def test_chat_echo(pair: Pair) -> None:
    """Chat ``echo``: the answer starts with the last message's content when that message is
    the assistant's (findings: F4)."""
    messages = [*CHAT, {"role": "assistant", "content": "Sure, here"}]
    body = {
        "messages": messages,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "echo": True,
        "max_tokens": 6,
        "temperature": 0,
    }
    comparison = compare(pair, "chat", body)
    assert comparison.choices()[0]["text"].startswith("Sure, here")
    assert_same(comparison)


# --- the tally ----------------------------------------------------------------------------------


def test_zz_summary(pair: Pair) -> None:
    """Runs last: the counts of what was compared (printed at the end of the module)."""
    if not STATS.generated:
        pytest.skip("the generated tests did not run (a selection)")
    assert sum(STATS.requests.values()) >= 400
    assert STATS.facts["stopped on a stop string"] >= 40
    assert STATS.facts["logprob entries"] >= 500
    assert STATS.categories["UNEXPLAINED"] == 0, "\n\n".join(STATS.unexplained[:3])
