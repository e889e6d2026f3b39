# ruff: noqa: E501  (the known-difference table holds verbatim model outputs)
"""Differential: herdsman's reasoning and tool-call parsers against vLLM 0.32's own, same outputs.

Every parser name both projects register (herdsman's primary names and aliases, vLLM's
``ReasoningParserManager`` / ``ToolParserManager``) gets the hand-written vectors of
tests/parsers/vectors.py plus seeded generated outputs in the family's format; names that reach
the same vLLM class and the same herdsman parser as another name (SAME_AS) run once. Each output
is tokenized with a real tokenizer (the family's own where the repository has it, else a real base
vocabulary with the family's markers added as special tokens, as the real vocabularies have them)
and parsed whole and streamed (one delta per token, and one random grouping) at token boundaries,
by herdsman here and by vLLM in one subprocess (tests/integration/vllm_parsers.py, the vLLM venv's
python). Reasoning, content and tool calls (names, arguments as parsed JSON) must agree, except
the differences listed in EXPECTED, each naming one case, one field and the modes, with its
category (A vLLM bug, B deliberate herdsman behaviour, C herdsman bug) and reason
(docs/fidelity.md, "Parsers"). HERDSMAN_PARSERS_DIFF_DUMP=file writes every difference as JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.fixture_tokenizers import model_dir
from tests.parsers import vectors
from tokenizers import AddedToken, Tokenizer

from herdsman.parsers import registry
from herdsman.parsers.tool_calls import collect

HERE = Path(__file__).resolve().parent
SEED = 20240613
CHUNKINGS = 2  # per case: one delta per token, then one random grouping of 1-5 tokens

# The names both registries have, as of vLLM 0.32.0 (the test prints and checks it).
EXPECTED_REASONING = [
    "deepseek_r1",
    "deepseek_v3",
    "glm45",
    "glm47",
    "kimi_k2",
    "minimax_m2",
    "mistral",
    "nemotron_v3",
    "openai_gptoss",
    "qwen3",
    "seed_oss",
    "step3",
    "step3p5",
]
EXPECTED_TOOL = [
    "deepseek_v3",
    "deepseek_v31",
    "deepseek_v32",
    "glm45",
    "glm47",
    "granite",
    "hermes",
    "internlm",
    "jamba",
    "kimi_k2",
    "llama3_json",
    "llama4_json",
    "llama4_pythonic",
    "minimax_m2",
    "mistral",
    "openai",
    "phi4_mini_json",
    "pythonic",
    "qwen3_coder",
    "qwen3_xml",
    "seed_oss",
    "step3",
]

# Tokenizers: (base, markers added as special tokens). qwen3, llama3, deepseek_v3 and gpt_oss
# are the real ones (tests/fixture_tokenizers.py); the other families' vocabularies are not in
# the repository, so their markers go on top of Qwen3's byte-level BPE, one token each as in the
# real vocabularies (vLLM's parsers look several of them up by id).
FAMILY_TOKENIZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qwen3": ("qwen3", ()),
    "llama3": ("llama3", ("<|python_tag|>",)),
    "deepseek_v3": ("deepseek_v3", ()),
    "deepseek_r1": ("deepseek_v3", ("<think>", "</think>")),  # R1 / V3.1 add them
    "gpt_oss": ("gpt_oss", ()),
    "glm": ("qwen3", ("<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")),
    "kimi_k2": (
        "qwen3",
        (
            "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>",
            "<|tool_call_begin|>",
            "<|tool_call_argument_begin|>",
            "<|tool_call_end|>",
        ),
    ),
    "minimax": ("qwen3", ("<minimax:tool_call>", "</minimax:tool_call>")),
    "seed": ("qwen3", ("<seed:think>", "</seed:think>", "<seed:tool_call>", "</seed:tool_call>")),
    "step3": (
        "qwen3",
        (
            "<｜tool_calls_begin｜>",
            "<｜tool_calls_end｜>",
            "<｜tool_call_begin｜>",
            "<｜tool_call_end｜>",
            "<｜tool_sep｜>",
        ),
    ),
    "mistral": ("qwen3", ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]")),
    "internlm": ("qwen3", ("<|action_start|>", "<|action_end|>", "<|plugin|>", "<|interpreter|>")),
    "granite": ("qwen3", ("<|tool_call|>",)),
    "jamba": ("qwen3", ("<tool_calls>", "</tool_calls>")),
}

REASONING_FAMILY = {
    "deepseek_r1": "deepseek_r1",
    "deepseek_v3": "deepseek_r1",
    "glm45": "glm",
    "glm47": "glm",
    "kimi_k2": "kimi_k2",
    "minimax_m2": "minimax",
    "mistral": "mistral",
    "nemotron_v3": "qwen3",
    "openai_gptoss": "gpt_oss",
    "qwen3": "qwen3",
    "seed_oss": "seed",
    "step3": "step3",
    "step3p5": "step3",
}
TOOL_FAMILY = {
    "deepseek_v3": "deepseek_v3",
    "deepseek_v31": "deepseek_v3",
    "deepseek_v32": "deepseek_v3",
    "glm45": "glm",
    "glm47": "glm",
    "granite": "granite",
    "hermes": "qwen3",
    "internlm": "internlm",
    "jamba": "jamba",
    "kimi_k2": "kimi_k2",
    "llama3_json": "llama3",
    "llama4_json": "llama3",
    "llama4_pythonic": "llama3",
    "minimax_m2": "minimax",
    "mistral": "mistral",
    "openai": "gpt_oss",
    "phi4_mini_json": "qwen3",
    "pythonic": "llama3",
    "qwen3_coder": "qwen3",
    "qwen3_xml": "qwen3",
    "seed_oss": "seed",
    "step3": "step3",
}

# Reasoning markers per herdsman reasoning parser: (start, end, whether output starts inside).
THINK_MARKERS: dict[str, tuple[str, str, bool]] = {
    "deepseek_r1": ("<think>", "</think>", True),
    "deepseek_v3": ("<think>", "</think>", False),
    "glm45": ("<think>", "</think>", False),
    "kimi_k2": ("<think>", "</think>", False),
    "minimax_m2": ("<think>", "</think>", True),
    "mistral": ("[THINK]", "[/THINK]", False),
    "nemotron": ("<think>", "</think>", False),
    "qwen3": ("<think>", "</think>", False),
    "seed_oss": ("<seed:think>", "</seed:think>", False),
    "step3": ("<think>", "</think>", True),
}


# Names that reach the same vLLM class and the same herdsman parser as another name: running them
# again would compare the same code twice. test_intersection checks the vLLM side of each pair.
SAME_AS: dict[tuple[str, str], str] = {
    ("reasoning", "glm47"): "glm45",
    ("tool", "llama4_json"): "llama3_json",
    ("tool", "qwen3_xml"): "qwen3_coder",
}


@dataclass
class Expected:
    """One known difference: one case, one field, whole and/or streamed (any chunking).

    category: "A" vLLM bug (herdsman's result is what a client expects), "B" deliberate
    herdsman behaviour, "C" herdsman bug not fixed yet. Each entry must still be seen."""

    case: str
    key: str  # the field: reasoning | content | tool_calls | error (vLLM raised)
    modes: tuple[str, ...]  # "whole", "stream"
    category: str
    reason: str
    hits: set[str] = field(default_factory=set)


W, S, WS = ("whole",), ("stream",), ("whole", "stream")

EXPECTED: list[Expected] = [
    Expected(
        "reasoning:deepseek_r1:deepseek_r1-with-tag",
        "reasoning",
        S,
        "A",
        "vLLM streamed: '<think>' left in the reasoning when it arrives in one delta with following text",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-0",
        "reasoning",
        WS,
        "B",
        "thinking not set: vLLM's deepseek_v3 passes everything through as content; herdsman still splits an explicit <think>...</think> so raw tags never reach the client",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-0",
        "content",
        WS,
        "B",
        "same: vLLM returns the raw '<think>...' text as content, herdsman only the answer",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-1",
        "reasoning",
        WS,
        "B",
        "thinking not set: vLLM's deepseek_v3 passes everything through as content; herdsman still splits an explicit <think>...</think> so raw tags never reach the client",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-1",
        "content",
        WS,
        "B",
        "same: vLLM returns the raw '<think>...' text as content, herdsman only the answer",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-2",
        "reasoning",
        WS,
        "B",
        "thinking not set: vLLM's deepseek_v3 passes everything through as content; herdsman still splits an explicit <think>...</think> so raw tags never reach the client",
    ),
    Expected(
        "reasoning:deepseek_v3:gen-2",
        "content",
        WS,
        "B",
        "same: vLLM returns the raw '<think>...' text as content, herdsman only the answer",
    ),
    Expected(
        "reasoning:openai_gptoss:openai_gptoss-tool-passthrough",
        "content",
        WS,
        "B",
        "herdsman's reasoning parser hands the commentary-channel call on as content for the tool parser (the pipeline case compares the pair); vLLM's alone drops it",
    ),
    Expected(
        "reasoning:openai_gptoss:openai_gptoss-prompt-in-analysis",
        "reasoning",
        WS,
        "A",
        "output continuing an analysis channel opened by the prompt: vLLM returns neither reasoning nor content (everything lost)",
    ),
    Expected(
        "reasoning:openai_gptoss:openai_gptoss-prompt-in-analysis",
        "content",
        WS,
        "A",
        "same: vLLM loses the final answer 'ok'",
    ),
    Expected(
        "reasoning:qwen3:qwen3-no-think",
        "reasoning",
        WS,
        "B",
        "output without <think>: vLLM's qwen3 calls it all reasoning (assumes the prompt opened <think>); herdsman's qwen3 treats it as the answer (qwen3_thinking / prompt_in_reasoning are the opt-in for prompt-opened thinking)",
    ),
    Expected(
        "reasoning:qwen3:qwen3-no-think",
        "content",
        WS,
        "B",
        "same: vLLM returns no content at all for a plain answer",
    ),
    Expected(
        "reasoning:step3:step3-explicit-think",
        "reasoning",
        WS,
        "A",
        "explicit '<think>' at the start: vLLM's step3 leaves the marker in the reasoning text",
    ),
    Expected(
        "tool:deepseek_v3:deepseek_v3-after-text",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v3:deepseek_v3-malformed-11",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:deepseek_v3:deepseek_v3-malformed-11",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments '{bad}' are not JSON)",
    ),
    Expected(
        "tool:deepseek_v3:gen-2",
        "content",
        S,
        "A",
        "vLLM streamed: text before the calls lost when it shares a delta with the begin marker",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-unicode",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-nested",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-parallel",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-after-text",
        "content",
        S,
        "A",
        "vLLM streamed: the last characters of the text before the calls are lost",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-after-text",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-malformed-12",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments [1, 2] are not an object)",
    ),
    Expected(
        "tool:deepseek_v31:deepseek_v31-malformed-12",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments [1, 2] are not an object)",
    ),
    Expected(
        "tool:deepseek_v31:gen-1",
        "content",
        S,
        "A",
        "vLLM streamed: the last characters of the text before the calls are lost",
    ),
    Expected(
        "tool:deepseek_v31:gen-1",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v31:gen-2",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: the last characters of the arguments are never sent (invalid JSON), '{}' sent as ''",
    ),
    Expected(
        "tool:deepseek_v32:deepseek_v32-malformed-10",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:deepseek_v32:deepseek_v32-malformed-10",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:glm45:glm45-malformed-6",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (unclosed <arg_value>)",
    ),
    Expected(
        "tool:glm45:glm45-malformed-6",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (unclosed <arg_value>)",
    ),
    Expected(
        "tool:glm45:glm45-no-schema-guesses-json",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:glm45:gen-1",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:glm45:gen-2",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:glm47:glm47-malformed-7",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (empty block)",
    ),
    Expected(
        "tool:granite:granite-malformed-22",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:hermes:hermes-malformed-0",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed only)",
    ),
    Expected(
        "tool:hermes:hermes-malformed-0",
        "tool_calls",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streams a call with invalid/empty arguments)",
    ),
    Expected(
        "tool:hermes:hermes-malformed-1",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed only)",
    ),
    Expected(
        "tool:hermes:hermes-malformed-2",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed only)",
    ),
    Expected(
        "tool:hermes:hermes-malformed-2",
        "tool_calls",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streams a call with invalid/empty arguments)",
    ),
    Expected(
        "tool:hermes:hermes-text-around",
        "content",
        WS,
        "A",
        "vLLM drops the text after the call ('Done.'); herdsman keeps it (joined without the framing newlines, see the whitespace note)",
    ),
    Expected(
        "tool:internlm:internlm-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' arguments come out as '' (not valid JSON)",
    ),
    Expected(
        "tool:internlm:internlm-parallel",
        "error",
        WS,
        "A",
        "vLLM's InternLM2 parser raises (ValueError) on two or more calls in one output",
    ),
    Expected(
        "tool:internlm:internlm-after-text",
        "error",
        WS,
        "A",
        "vLLM's InternLM2 parser raises (ValueError) on two or more calls in one output",
    ),
    Expected(
        "tool:internlm:internlm-malformed-25",
        "error",
        W,
        "A",
        "vLLM raises KeyError('name') on a call object without a name",
    ),
    Expected(
        "tool:internlm:internlm-malformed-25",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed drops it)",
    ),
    Expected(
        "tool:internlm:gen-0",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' arguments come out as '' (not valid JSON)",
    ),
    Expected(
        "tool:internlm:gen-1",
        "error",
        WS,
        "A",
        "vLLM's InternLM2 parser raises (ValueError) on two or more calls in one output",
    ),
    Expected(
        "tool:jamba:jamba-unicode",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:jamba:jamba-nested",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:jamba:jamba-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:jamba:jamba-parallel",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:jamba:jamba-after-text",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:jamba:jamba-after-text",
        "content",
        S,
        "A",
        "vLLM streamed: the end of the text before <tool_calls> is lost",
    ),
    Expected(
        "tool:jamba:jamba-malformed-23",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed drops it)",
    ),
    Expected(
        "tool:jamba:gen-2",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: argument deltas mis-assembled (quotes/brackets misplaced, repeated) or '{}' sent as ''",
    ),
    Expected(
        "tool:kimi_k2:kimi_k2-malformed-13",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (no argument marker)",
    ),
    Expected(
        "tool:kimi_k2:kimi_k2-malformed-13",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (no argument marker)",
    ),
    Expected(
        "tool:llama3_json:llama3_json-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' arguments come out as '' (not valid JSON)",
    ),
    Expected(
        "tool:llama3_json:llama3_json-after-text",
        "content",
        W,
        "A",
        "vLLM whole: the text before <|python_tag|> is dropped",
    ),
    Expected(
        "tool:llama3_json:llama3_json-after-text",
        "content",
        S,
        "B",
        "calls after text: herdsman parses them (as vLLM's whole-output path does); vLLM streamed sends the whole output, JSON included, as content",
    ),
    Expected(
        "tool:llama3_json:llama3_json-after-text",
        "tool_calls",
        S,
        "B",
        "calls after text: herdsman parses them (as vLLM's whole-output path does); vLLM streamed sends the whole output, JSON included, as content",
    ),
    Expected(
        "tool:llama3_json:llama3_json-malformed-18",
        "content",
        WS,
        "B",
        "JSON followed by prose is not a call-only output: herdsman keeps it as content; vLLM emits the call and drops the prose",
    ),
    Expected(
        "tool:llama3_json:llama3_json-malformed-18",
        "tool_calls",
        WS,
        "B",
        "same (vLLM streamed even sends the call with '' arguments)",
    ),
    Expected(
        "tool:llama3_json:llama3_json-bare",
        "content",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama3_json:llama3_json-bare",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama3_json:gen-0",
        "content",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama3_json:gen-0",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama3_json:gen-1",
        "content",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama3_json:gen-1",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: a call output starting with whitespace (or bare JSON) is sent as content, no call (the whole-output path parses it)",
    ),
    Expected(
        "tool:llama4_pythonic:pythonic-malformed-16",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (positional arguments have no names; vLLM streamed emits f with {})",
    ),
    Expected(
        "tool:llama4_pythonic:pythonic-malformed-16",
        "tool_calls",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (positional arguments have no names; vLLM streamed emits f with {})",
    ),
    Expected(
        "tool:llama4_pythonic:pythonic-malformed-17",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed drops it)",
    ),
    Expected(
        "tool:llama4_pythonic:gen-0",
        "content",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:llama4_pythonic:gen-0",
        "tool_calls",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:minimax_m2:minimax_m2-malformed-8",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (unclosed <parameter>)",
    ),
    Expected(
        "tool:minimax_m2:minimax_m2-malformed-8",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (unclosed <parameter>)",
    ),
    Expected(
        "tool:minimax_m2:gen-0",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:minimax_m2:gen-1",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:minimax_m2:gen-2",
        "tool_calls",
        WS,
        "B",
        "no schema for the parameter: herdsman decodes JSON-looking values (the chat template renders non-strings as JSON), vLLM keeps them as strings",
    ),
    Expected(
        "tool:mistral:mistral-list",
        "tool_calls",
        WS,
        "A",
        "Mistral's JSON-list form: vLLM returns one call named '[' whose arguments are the first call object",
    ),
    Expected(
        "tool:mistral:mistral-malformed-14",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments not JSON)",
    ),
    Expected(
        "tool:mistral:mistral-malformed-14",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments not JSON)",
    ),
    Expected(
        "tool:mistral:mistral-malformed-15",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (prose after the call list; vLLM returns a call named '[')",
    ),
    Expected(
        "tool:mistral:mistral-malformed-15",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (prose after the call list; vLLM returns a call named '[')",
    ),
    Expected(
        "tool:mistral:mistral-call-id",
        "tool_calls",
        WS,
        "A",
        "vLLM puts '[CALL_ID]<id>' into the function name",
    ),
    Expected(
        "tool:openai:openai-unicode",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:openai-nested",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:openai-escaped_quotes",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:openai-empty_arguments",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:openai-parallel",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:openai-malformed-21",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (arguments not JSON)",
    ),
    Expected(
        "tool:openai:gen-0",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:openai:gen-2",
        "tool_calls",
        WS,
        "B",
        "output that starts with the '<|start|>assistant' header: herdsman accepts the header either in the prompt or in the output; vLLM's openai tool parser alone loses the first message's call",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-unicode",
        "tool_calls",
        S,
        "A",
        "vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-nested",
        "tool_calls",
        WS,
        "A",
        "vLLM whole: its non-greedy 'functools[(.*?)]' stops at the first ']', so nested or several calls give no call; streamed: vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-escaped_quotes",
        "tool_calls",
        S,
        "A",
        "vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-parallel",
        "tool_calls",
        WS,
        "A",
        "vLLM whole: its non-greedy 'functools[(.*?)]' stops at the first ']', so nested or several calls give no call; streamed: vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-after-text",
        "content",
        WS,
        "A",
        "vLLM drops the text before 'functools[' (whole) and streams nothing",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-after-text",
        "tool_calls",
        WS,
        "A",
        "vLLM whole: its non-greedy 'functools[(.*?)]' stops at the first ']', so nested or several calls give no call; streamed: vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:phi4_mini_json-malformed-24",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:phi4_mini_json:gen-0",
        "tool_calls",
        WS,
        "A",
        "vLLM whole: its non-greedy 'functools[(.*?)]' stops at the first ']', so nested or several calls give no call; streamed: vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:phi4_mini_json:gen-1",
        "content",
        S,
        "A",
        "vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream (plain text without calls is lost)",
    ),
    Expected(
        "tool:phi4_mini_json:gen-2",
        "tool_calls",
        S,
        "A",
        "vLLM's phi4_mini_json does not stream: no calls and no content come out of a stream",
    ),
    Expected(
        "tool:pythonic:pythonic-malformed-16",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (positional arguments have no names; vLLM streamed emits f with {})",
    ),
    Expected(
        "tool:pythonic:pythonic-malformed-16",
        "tool_calls",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (positional arguments have no names; vLLM streamed emits f with {})",
    ),
    Expected(
        "tool:pythonic:pythonic-malformed-17",
        "content",
        S,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (vLLM streamed drops it)",
    ),
    Expected(
        "tool:pythonic:gen-0",
        "content",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:pythonic:gen-0",
        "tool_calls",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:pythonic:gen-1",
        "content",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:pythonic:gen-1",
        "tool_calls",
        WS,
        "A",
        "a call list after leading whitespace: vLLM (whole and streamed) returns it as content, no call",
    ),
    Expected(
        "tool:qwen3_coder:qwen3_coder-malformed-3",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (stray text between parameters)",
    ),
    Expected(
        "tool:qwen3_coder:qwen3_coder-malformed-3",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (stray text between parameters)",
    ),
    Expected(
        "tool:qwen3_coder:qwen3_coder-malformed-4",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (no <function=...>)",
    ),
    Expected(
        "tool:seed_oss:seed_oss-malformed-5",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text",
    ),
    Expected(
        "tool:step3:step3-unicode",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' appended after the arguments (invalid JSON), or '{}' arguments sent as ''",
    ),
    Expected(
        "tool:step3:step3-nested",
        "tool_calls",
        WS,
        "A",
        "vLLM ignores the schema's object/array types and returns JSON values as strings; streamed also appends '{}'",
    ),
    Expected(
        "tool:step3:step3-escaped_quotes",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' appended after the arguments (invalid JSON), or '{}' arguments sent as ''",
    ),
    Expected(
        "tool:step3:step3-empty_arguments",
        "tool_calls",
        S,
        "A",
        "vLLM streamed: '{}' appended after the arguments (invalid JSON), or '{}' arguments sent as ''",
    ),
    Expected(
        "tool:step3:step3-parallel",
        "tool_calls",
        WS,
        "A",
        "vLLM ignores the schema's object/array types and returns JSON values as strings; streamed also appends '{}'",
    ),
    Expected(
        "tool:step3:step3-after-text",
        "tool_calls",
        WS,
        "A",
        "vLLM ignores the schema's object/array types and returns JSON values as strings; streamed also appends '{}'",
    ),
    Expected(
        "tool:step3:step3-malformed-9",
        "content",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (text instead of parameters)",
    ),
    Expected(
        "tool:step3:step3-malformed-9",
        "tool_calls",
        WS,
        "B",
        "malformed call block: herdsman keeps it verbatim as content (nothing the client can run is invented, no text lost); vLLM emits a partial/guessed call or drops the text (text instead of parameters)",
    ),
    Expected(
        "tool:step3:gen-0",
        "tool_calls",
        WS,
        "A",
        "vLLM drops parameters whose value contains '<' or '>'; streamed sends '{}' as '' (other values: no-schema strings)",
    ),
]


# ---------------------------------------------------------------------------------------------
# Tokenizers and token-boundary chunkings


def _tokenizer_dirs(root: Path) -> tuple[dict[str, Path], dict[str, Tokenizer]]:
    dirs: dict[str, Path] = {}
    loaded: dict[str, Tokenizer] = {}
    for family, (base, added) in FAMILY_TOKENIZERS.items():
        source = model_dir(base)
        tok = Tokenizer.from_file(str(source / "tokenizer.json"))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
        target = root / family
        target.mkdir()
        tok.save(str(target / "tokenizer.json"), pretty=False)
        config = json.loads((source / "tokenizer_config.json").read_text())
        config.pop("added_tokens_decoder", None)
        config.pop("chat_template", None)
        config["clean_up_tokenization_spaces"] = False
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (target / "tokenizer_config.json").write_text(json.dumps(config))
        # A config.json vLLM can parse: without one, get_tokenizer retries the model config
        # (about a second per tokenizer). Only the tokenizer is used.
        (target / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        dirs[family] = target
        loaded[family] = tok
    return dirs, loaded


class Tokens:
    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def split(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """Token ids, the token counts after which a delta may end (the decoded prefix is whole
        characters), and each such boundary's offset in the text."""
        encoding = self.tok.encode(text, add_special_tokens=False)
        spans = encoding.offsets
        bounds, offsets = [], []
        for end in range(1, len(spans)):
            # A character split over tokens gives those tokens the same span.
            if spans[end - 1][1] <= spans[end][0] and spans[end - 1] != spans[end]:
                bounds.append(end)
                offsets.append(spans[end][0])
        return encoding.ids, bounds, offsets


def _chunkings(case_id: str, clean: list[int]) -> list[list[int]]:
    rng = random.Random(f"{SEED}:{case_id}")
    out = [list(clean)]
    for _ in range(CHUNKINGS - 1):
        bounds, last = [], 0
        for b in clean:
            if b - last >= rng.randint(1, 5):
                bounds.append(b)
                last = b
        out.append(bounds)
    return out


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    kind: str  # reasoning | tool | pipeline
    vllm_reasoning: str | None
    vllm_tool: str | None
    family: str
    text: str
    tools: list[dict[str, Any]] | None = None
    thinking: bool | None = None
    prompt_in_reasoning: bool = False
    prompt: str = ""
    token_ids: list[int] = field(default_factory=list)
    chunkings: list[list[int]] = field(default_factory=list)
    deltas: list[list[str]] = field(default_factory=list)

    @property
    def parser(self) -> str:
        return (self.vllm_tool if self.kind == "tool" else self.vllm_reasoning) or ""

    def request(self, tokenizer_dir: Path) -> dict[str, Any]:
        kwargs = None
        if self.thinking is not None:
            kwargs = {"enable_thinking": self.thinking, "thinking": self.thinking}
        return {
            "id": self.id,
            "kind": self.kind,
            "reasoning_parser": self.vllm_reasoning,
            "tool_parser": self.vllm_tool,
            "tokenizer": str(tokenizer_dir),
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt": self.prompt,
            "chunkings": self.chunkings,
            "tools": self.tools,
            "chat_template_kwargs": kwargs,
        }


_WORDS = ["alpha", "Zürich", "東京", "naïve", "🌧", "tab\there", "a<b", "x > y", "ünïcödé", "42"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.2:
        return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    if depth < 2 and roll < 0.35:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.55:
        return " ".join(rng.sample(_WORDS, rng.randint(1, 3)))
    if roll < 0.7:
        return rng.randint(-5, 1000)
    if roll < 0.8:
        return rng.choice([True, False])
    if roll < 0.9:
        return round(rng.uniform(-10, 10), 3)
    return 'quote " and \\ backslash'


_TOOL_NAMES = ["get_weather", "search", "write_file", "get_time", "tag"]


def _calls(rng: random.Random) -> list[vectors.Call]:
    out = []
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(_TOOL_NAMES)
        args = {f"p{i}": _value(rng) for i in range(rng.randint(0, 3))}
        out.append((name, args))
    return out


def _prose(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))


def _herdsman_tool(name: str) -> str:
    return registry.get_tool_call_parser(name).name


def _herdsman_reasoning(name: str) -> str:
    return registry.get_reasoning_parser(name).name


GENERATED_PER_PARSER = 3


def _tool_cases(name: str) -> list[Case]:
    rng = random.Random(f"{SEED}:tool:{name}")
    primary = _herdsman_tool(name)
    family = TOOL_FAMILY[name]
    cases = []
    for v in vectors.tool_vectors():
        if v.parser == primary:
            cases.append(Case(f"tool:{name}:{v.id}", "tool", None, name, family, v.text, v.tools))
    render, text_first = vectors.RENDERERS[primary]
    for i in range(GENERATED_PER_PARSER):
        calls = _calls(rng)
        body = render(calls) if calls else ""
        before = _prose(rng) if (text_first or not calls) and rng.random() < 0.6 else ""
        gap = rng.choice(["", " ", "\n", "\n\n"]) if before and body else ""
        lead = rng.choice(["", "", "\n", " "])
        text = lead + before + gap + body
        if not text.strip():
            text = _prose(rng)
        cases.append(Case(f"tool:{name}:gen-{i}", "tool", None, name, family, text, _gen_tools()))
    return cases


def _gen_tools() -> list[dict[str, Any]]:
    return [vectors._tool(n) for n in _TOOL_NAMES]


def _reasoning_cases(name: str) -> list[Case]:
    rng = random.Random(f"{SEED}:reasoning:{name}")
    primary = _herdsman_reasoning(name)
    family = REASONING_FAMILY[name]
    cases = []
    for v in vectors.REASONING_VECTORS:
        if v.parser != primary:
            continue
        cases.append(_reasoning_case(f"reasoning:{name}:{v.id}", name, family, v.text, v.kwargs))
    if primary == "openai_gptoss":
        for i in range(GENERATED_PER_PARSER):
            analysis, final = _prose(rng), _prose(rng)
            text = f"<|channel|>analysis<|message|>{analysis}<|end|>"
            if rng.random() < 0.7:
                text += f"<|start|>assistant<|channel|>final<|message|>{final}"
                text += rng.choice(["<|return|>", ""])
            cases.append(_reasoning_case(f"reasoning:{name}:gen-{i}", name, family, text, {}))
        return cases
    start, end, starts_inside = THINK_MARKERS[primary]
    for i in range(GENERATED_PER_PARSER):
        reasoning, content = _prose(rng), _prose(rng) if rng.random() < 0.8 else ""
        ws = [rng.choice(["", "\n", "\n\n", " "]) for _ in range(3)]
        opened = not starts_inside or rng.random() < 0.5
        text = (start + ws[0] if opened else "") + reasoning
        if rng.random() < 0.8:
            text += ws[1] + end + ws[2] + content
        cases.append(_reasoning_case(f"reasoning:{name}:gen-{i}", name, family, text, {}))
    return cases


def _reasoning_case(
    case_id: str, name: str, family: str, text: str, kwargs: dict[str, Any]
) -> Case:
    case = Case(case_id, "reasoning", name, None, family, text)
    case.thinking = kwargs.get("thinking")
    case.prompt_in_reasoning = bool(kwargs.get("prompt_in_reasoning"))
    if case.prompt_in_reasoning:
        primary = _herdsman_reasoning(name)
        start = THINK_MARKERS.get(primary, ("<|channel|>analysis<|message|>", "", False))[0]
        case.prompt = start + ("\n" if primary != "openai_gptoss" else "")
    return case


def _pipeline_cases() -> list[Case]:
    """gpt-oss: vLLM parses Harmony as one stream (HarmonyParser), so the pair is compared."""
    cases = []
    for i, (r, t, text, *_rest) in enumerate(_pipeline_vectors()):
        cases.append(Case(f"pipeline:{r}+{t}:{i}", "pipeline", r, t, "gpt_oss", text, None))
    return cases


def _pipeline_vectors() -> list[tuple[str, str, str]]:
    from tests.parsers.test_pipeline import CASES

    return [(r, t, text) for r, t, text, *_ in CASES if r == "openai_gptoss" and t == "openai"]


# ---------------------------------------------------------------------------------------------
# herdsman's side


def _calls_json(calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for name, arguments in calls:
        try:
            value = json.loads(arguments)
        except ValueError:
            value = arguments
        out.append({"name": name, "arguments": value})
    return out


def _herdsman(case: Case, pieces: list[str]) -> dict[str, Any]:
    reasoning: str | None = None
    content: str | None = "".join(pieces)
    if case.kind in ("reasoning", "pipeline"):
        parser = registry.get_reasoning_parser(case.vllm_reasoning or "")(
            thinking=case.thinking, prompt_in_reasoning=case.prompt_in_reasoning
        )
        r_parts, c_parts = [], []
        for piece in pieces:
            r, c = parser.feed(piece)
            r_parts.append(r)
            c_parts.append(c)
        r, c = parser.finish()
        reasoning = "".join([*r_parts, r]) or None
        content_pieces = [*c_parts, c]
        content = "".join(content_pieces)
    else:
        content_pieces = pieces
    calls: list[dict[str, Any]] = []
    if case.kind in ("tool", "pipeline"):
        tool = registry.get_tool_call_parser(case.vllm_tool or "")(case.tools)
        events = []
        for piece in content_pieces:
            events.extend(tool.feed(piece))
        events.extend(tool.finish())
        parsed = collect(events)
        content = parsed.content
        calls = _calls_json([(c.name, c.arguments) for c in parsed.calls])
    return {"reasoning": reasoning or None, "content": content or None, "tool_calls": calls}


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    cases: list[Case]
    results: dict[str, dict[str, Any]]
    registered: dict[str, list[str]]
    classes: dict[str, str]  # "kind:name" -> vLLM class, for the names in SAME_AS
    seconds: float
    log: str


def _candidate_names() -> tuple[list[str], list[str]]:
    reasoning = {registry._key(n) for c in registry.REASONING_PARSERS for n in (c.name, *c.aliases)}
    tool = {registry._key(n) for c in registry.TOOL_CALL_PARSERS for n in (c.name, *c.aliases)}
    return sorted(reasoning), sorted(tool)


@pytest.fixture(scope="module")
def run(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    setup_started = time.monotonic()
    dirs, loaded = _tokenizer_dirs(tmp_path_factory.mktemp("parser-tokenizers"))
    tokens = {family: Tokens(tok) for family, tok in loaded.items()}
    cases: list[Case] = []
    for name in sorted(REASONING_FAMILY):
        if ("reasoning", name) not in SAME_AS:
            cases.extend(_reasoning_cases(name))
    for name in sorted(TOOL_FAMILY):
        if ("tool", name) not in SAME_AS:
            cases.extend(_tool_cases(name))
    cases.extend(_pipeline_cases())
    for case in cases:
        tok = tokens[case.family]
        case.token_ids, clean, offsets = tok.split(case.text)
        assert tok.decode(case.token_ids) == case.text, case.id
        at = dict(zip(clean, offsets, strict=True))
        case.chunkings = _chunkings(case.id, clean)
        case.deltas = []
        for bounds in case.chunkings:
            cuts = [0, *(at[b] for b in bounds), len(case.text)]
            case.deltas.append([case.text[a:b] for a, b in itertools.pairwise(cuts)])
    same = sorted({n for pair in SAME_AS.items() for n in (pair[0], (pair[0][0], pair[1]))})
    payload = {
        "cases": [case.request(dirs[case.family]) for case in cases],
        "classes": [list(n) for n in same],
    }
    print(f"\nsetup (tokenizers, cases, chunkings) took {time.monotonic() - setup_started:.1f}s")
    started = time.monotonic()
    done = subprocess.run(
        [str(vllm_python), str(HERE / "vllm_parsers.py")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)
    return Run(
        cases,
        {r["id"]: r for r in out["results"]},
        out["registered"],
        out["classes"],
        seconds,
        done.stderr.strip(),
    )


def test_intersection(run: Run) -> None:
    reasoning, tool = _candidate_names()
    both_reasoning = sorted(set(reasoning) & set(run.registered["reasoning"]))
    both_tool = sorted(set(tool) & set(run.registered["tool"]))
    print(f"\nreasoning parsers compared ({len(both_reasoning)}): {', '.join(both_reasoning)}")
    print(f"tool-call parsers compared ({len(both_tool)}): {', '.join(both_tool)}")
    print(
        "run once for their twin (same vLLM class, same herdsman parser): "
        + ", ".join(f"{kind} {name}={twin}" for (kind, name), twin in SAME_AS.items())
    )
    counts: dict[str, int] = {}
    for case in run.cases:
        counts[case.kind] = counts.get(case.kind, 0) + 1
    print(f"cases: {counts}, each whole and in {CHUNKINGS} chunkings; vLLM took {run.seconds:.1f}s")
    per_parser: dict[str, float] = {}
    for case in run.cases:
        key = f"{case.kind}:{case.parser}"
        per_parser[key] = per_parser.get(key, 0.0) + run.results[case.id].get("seconds", 0.0)
    slowest = sorted(per_parser.items(), key=lambda kv: -kv[1])[:6]
    print(run.log.splitlines()[-1] if run.log else "")
    print("slowest in vLLM: " + ", ".join(f"{k} {v:.1f}s" for k, v in slowest))
    assert both_reasoning == EXPECTED_REASONING
    assert both_tool == EXPECTED_TOOL
    assert sorted(REASONING_FAMILY) == EXPECTED_REASONING
    assert sorted(TOOL_FAMILY) == EXPECTED_TOOL
    for (kind, name), twin in SAME_AS.items():
        assert run.classes[f"{kind}:{name}"] == run.classes[f"{kind}:{twin}"], name
        ours = registry.get_tool_call_parser if kind == "tool" else registry.get_reasoning_parser
        assert ours(name) is ours(twin), name


def _norm(parsed: dict[str, Any]) -> dict[str, Any]:
    """The one normalisation: whitespace at the ends of reasoning and content. herdsman drops
    whitespace right beside its markers (framing, documented in parsers/reasoning.py and
    parsers/tool_calls.py); vLLM keeps it. Inside the text nothing is normalised, and arguments
    compare as parsed JSON values."""
    out = dict(parsed)
    for key in ("reasoning", "content"):
        out[key] = (out[key] or "").strip() or None
    return out


def _differences(run: Run) -> list[tuple[Case, str, str, Any, Any]]:
    found = []
    for case in run.cases:
        result = run.results[case.id]
        assert result["token_ids"] == case.token_ids, case.id
        modes: list[tuple[str, dict[str, Any], list[str]]] = [
            ("whole", result["whole"], [case.text])
        ]
        for i, stream in enumerate(result["streams"]):
            if stream.get("error") is None:
                assert stream["deltas"] == case.deltas[i], case.id
            modes.append((f"stream{i}", stream, case.deltas[i]))
        for mode, theirs, pieces in modes:
            if theirs.get("error"):
                found.append((case, mode, "error", None, theirs["error"].strip().splitlines()[-1]))
                continue
            ours, theirs = _norm(_herdsman(case, pieces)), _norm(theirs)
            for key in ("reasoning", "content", "tool_calls"):
                if ours[key] != theirs[key]:
                    found.append((case, mode, key, ours[key], theirs[key]))
    return found


def test_herdsman_agrees_with_vllm(run: Run) -> None:
    known = {(e.case, e.key, m): e for e in EXPECTED for m in e.modes}
    assert len(known) == sum(len(e.modes) for e in EXPECTED), "one entry per case, field, mode"
    ids = {case.id for case in run.cases}
    assert not [e.case for e in EXPECTED if e.case not in ids], "entries for unknown cases"
    assert {e.category for e in EXPECTED} <= {"A", "B", "C"}
    started = time.monotonic()
    found = _differences(run)
    print(f"\nherdsman side and comparison took {time.monotonic() - started:.1f}s")
    dump = os.environ.get("HERDSMAN_PARSERS_DIFF_DUMP")
    if dump:  # for triage: every difference, listed or not
        rows = [
            {"case": c.id, "mode": m, "field": k, "herdsman": o, "vllm": t, "text": c.text}
            for c, m, k, o, t in found
        ]
        Path(dump).write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    unexpected = []
    for case, mode, key, ours, theirs in found:
        base_mode = "whole" if mode == "whole" else "stream"
        entry = known.get((case.id, key, base_mode))
        if entry is not None:
            entry.hits.add(base_mode)
            continue
        unexpected.append(
            f"{case.id} [{mode}] {key}: herdsman={ours!r} vllm={theirs!r}\n    text={case.text!r}"
        )
    assert not unexpected, f"{len(unexpected)} differences:\n" + "\n".join(unexpected)
    stale = [f"{e.case} {e.key} {m}" for e in EXPECTED for m in e.modes if m not in e.hits]
    assert not stale, f"expected differences no longer seen (narrow or drop them): {stale}"
    by = {c: sum(e.category == c for e in EXPECTED) for c in "ABC"}
    print(
        f"\nexpected differences: {len(EXPECTED)} (A vLLM bug {by['A']}, B deliberate {by['B']}, C herdsman bug {by['C']})"
    )
