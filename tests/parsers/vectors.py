"""Test vectors for every parser, written from the vendors' documented formats and templates.

Each tool-call format has a renderer that writes calls the way the model does (its chat template
or model card); the shared call sets below then go through every format: unicode, nested JSON,
escaped quotes, empty arguments, several calls, calls after text. Hand-written vectors add each
format's own cases, malformed calls among them (they must come back as content, verbatim).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Call = tuple[str, dict[str, Any]]


@dataclass
class ToolVector:
    id: str
    parser: str
    text: str
    content: str | None
    calls: list[Call]
    tools: list[dict[str, Any]] | None = None


@dataclass
class ReasoningVector:
    id: str
    parser: str
    text: str
    reasoning: str | None
    content: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _tool(name: str, **props: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {
                "type": "object",
                "properties": {k: {"type": t} for k, t in props.items()},
            },
        },
    }


TOOLS = [
    _tool("get_weather", city="string", days="integer", metric="boolean"),
    _tool("search", query="string", filters="object", limit="number"),
    _tool("write_file", path="string", content="string"),
    _tool("ping"),
    _tool("get_time", tz="string"),
    _tool("tag", labels="array", code="string"),
]

CALL_SETS: dict[str, list[Call]] = {
    "unicode": [("get_weather", {"city": "東京 — Zürich 🌧", "days": 3, "metric": True})],
    "nested": [
        (
            "search",
            {
                "query": "rust async",
                "filters": {"range": {"from": 1, "to": [2, 3]}, "tags": ["a", {"b": None}]},
                "limit": 2.5,
            },
        )
    ],
    "escaped_quotes": [
        ("write_file", {"path": 'notes "draft".txt', "content": 'say "hi"\nline2\t\\ end'})
    ],
    "empty_arguments": [("ping", {})],
    "parallel": [
        ("get_weather", {"city": "Paris", "days": 1}),
        ("get_time", {"tz": "Europe/Paris"}),
        ("tag", {"labels": ["x", "y"], "code": "42"}),
    ],
}

PREFIX = "Let me check that for you."


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _xml_value(value: Any) -> str:
    return value if isinstance(value, str) else _j(value)


def _py(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    return repr(value)


def render_hermes(calls: list[Call]) -> str:
    return "\n".join(
        f'<tool_call>\n{{"name": "{n}", "arguments": {_j(a)}}}\n</tool_call>' for n, a in calls
    )


def _xml_function(name: str, args: dict[str, Any]) -> str:
    params = "".join(f"<parameter={k}>\n{_xml_value(v)}\n</parameter>\n" for k, v in args.items())
    return f"<function={name}>\n{params}</function>"


def render_qwen3_coder(calls: list[Call]) -> str:
    return "\n".join(f"<tool_call>\n{_xml_function(n, a)}\n</tool_call>" for n, a in calls)


def render_seed_oss(calls: list[Call]) -> str:
    return "".join(f"<seed:tool_call>\n{_xml_function(n, a)}\n</seed:tool_call>" for n, a in calls)


def render_glm45(calls: list[Call]) -> str:
    out = []
    for name, args in calls:
        pairs = "".join(
            f"\n<arg_key>{k}</arg_key>\n<arg_value>{_xml_value(v)}</arg_value>"
            for k, v in args.items()
        )
        out.append(f"<tool_call>{name}{pairs}\n</tool_call>")
    return "\n".join(out)


def render_glm47(calls: list[Call]) -> str:
    return "".join(
        f"<tool_call>{n}"
        + "".join(
            f"<arg_key>{k}</arg_key><arg_value>{_xml_value(v)}</arg_value>" for k, v in a.items()
        )
        + "</tool_call>"
        for n, a in calls
    )


def render_minimax_m2(calls: list[Call]) -> str:
    invokes = "".join(
        f'<invoke name="{n}">\n'
        + "".join(f'<parameter name="{k}">{_xml_value(v)}</parameter>\n' for k, v in a.items())
        + "</invoke>\n"
        for n, a in calls
    )
    return f"<minimax:tool_call>\n{invokes}</minimax:tool_call>"


def render_step3(calls: list[Call]) -> str:
    body = "".join(
        f'<｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name="{n}">'
        + "".join(
            f'<steptml:parameter name="{k}">{_xml_value(v)}</steptml:parameter>'
            for k, v in a.items()
        )
        + "</steptml:invoke><｜tool_call_end｜>\n"
        for n, a in calls
    )
    return f"<｜tool_calls_begin｜>\n{body}<｜tool_calls_end｜>"


def render_deepseek_v32(calls: list[Call]) -> str:
    invokes = "".join(
        f'<｜DSML｜invoke name="{n}">\n'
        + "".join(
            f'<｜DSML｜parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
            f"{_xml_value(v)}</｜DSML｜parameter>\n"
            for k, v in a.items()
        )
        + "</｜DSML｜invoke>\n"
        for n, a in calls
    )
    return f"<｜DSML｜function_calls>\n{invokes}</｜DSML｜function_calls>"


def render_deepseek_v3(calls: list[Call]) -> str:
    body = "\n".join(
        f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{n}\n```json\n{_j(a)}\n```<｜tool▁call▁end｜>"
        for n, a in calls
    )
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def render_deepseek_v31(calls: list[Call]) -> str:
    body = "".join(
        f"<｜tool▁call▁begin｜>{n}<｜tool▁sep｜>{_j(a)}<｜tool▁call▁end｜>" for n, a in calls
    )
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def render_kimi_k2(calls: list[Call]) -> str:
    body = "".join(
        f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{_j(a)}<|tool_call_end|>"
        for i, (n, a) in enumerate(calls)
    )
    return f"<|tool_calls_section_begin|>{body}<|tool_calls_section_end|>"


def render_mistral(calls: list[Call]) -> str:
    return "".join(f"[TOOL_CALLS]{n}[ARGS]{_j(a)}" for n, a in calls)


def render_mistral_list(calls: list[Call]) -> str:
    return "[TOOL_CALLS]" + _j([{"name": n, "arguments": a} for n, a in calls])


def render_pythonic(calls: list[Call]) -> str:
    return (
        "["
        + ", ".join(f"{n}({', '.join(f'{k}={_py(v)}' for k, v in a.items())})" for n, a in calls)
        + "]"
    )


def render_llama3_json(calls: list[Call]) -> str:
    return "<|python_tag|>" + "; ".join(_j({"name": n, "parameters": a}) for n, a in calls)


def render_json(calls: list[Call]) -> str:
    return _j([{"name": n, "arguments": a} for n, a in calls])


def render_cohere(calls: list[Call]) -> str:
    items = [
        {"tool_call_id": str(i), "tool_name": n, "parameters": a} for i, (n, a) in enumerate(calls)
    ]
    return f"<|START_ACTION|>{_j(items)}<|END_ACTION|>"


def render_openai(calls: list[Call]) -> str:
    return "".join(
        f"<|start|>assistant to=functions.{n}<|channel|>commentary json<|message|>{_j(a)}<|call|>"
        for n, a in calls
    )


def render_granite(calls: list[Call]) -> str:
    return "<|tool_call|>" + render_json(calls)


def render_jamba(calls: list[Call]) -> str:
    return f"<tool_calls>{render_json(calls)}</tool_calls>"


def render_phi4(calls: list[Call]) -> str:
    return "functools" + render_json(calls)


def render_internlm(calls: list[Call]) -> str:
    return "".join(
        f"<|action_start|><|plugin|>{_j({'name': n, 'parameters': a})}<|action_end|>"
        for n, a in calls
    )


# parser -> (renderer, whether text may come before the calls)
RENDERERS: dict[str, tuple[Callable[[list[Call]], str], bool]] = {
    "hermes": (render_hermes, True),
    "qwen3_coder": (render_qwen3_coder, True),
    "seed_oss": (render_seed_oss, True),
    "glm45": (render_glm45, True),
    "glm47": (render_glm47, True),
    "minimax_m2": (render_minimax_m2, True),
    "step3": (render_step3, True),
    "deepseek_v32": (render_deepseek_v32, True),
    "deepseek_v3": (render_deepseek_v3, True),
    "deepseek_v31": (render_deepseek_v31, True),
    "kimi_k2": (render_kimi_k2, True),
    "mistral": (render_mistral, True),
    "pythonic": (render_pythonic, False),
    "llama3_json": (render_llama3_json, True),
    "json": (render_json, False),
    "cohere": (render_cohere, True),
    "openai": (render_openai, False),  # text comes in its own final-channel message
    "granite": (render_granite, True),
    "jamba": (render_jamba, True),
    "phi4_mini_json": (render_phi4, True),
    "internlm": (render_internlm, True),
}


def _generated() -> list[ToolVector]:
    vectors: list[ToolVector] = []
    for parser, (render, text_first) in RENDERERS.items():
        for set_name, calls in CALL_SETS.items():
            vectors.append(
                ToolVector(f"{parser}-{set_name}", parser, render(calls), None, calls, TOOLS)
            )
        if text_first:
            calls = CALL_SETS["parallel"]
            text = f"{PREFIX}\n\n{render(calls)}"
            vectors.append(ToolVector(f"{parser}-after-text", parser, text, PREFIX, calls, TOOLS))
    calls = CALL_SETS["parallel"]
    vectors.append(
        ToolVector("mistral-list", "mistral", render_mistral_list(calls), None, calls, TOOLS)
    )
    return vectors


# Plain text with marker-like pieces that must pass through untouched.
PLAIN = "Use a < b and [x] {y}; <tool> isn't <|a tag|>, ``` fine ```\n  ◁ ｜ end  "

_MALFORMED: list[tuple[str, str]] = [
    ("hermes", 'Hi\n<tool_call>\n{"name": "f", "arguments": {"a": }\n</tool_call>'),
    ("hermes", 'Hi <tool_call>\n{"arguments": {}}\n</tool_call>'),
    ("hermes", 'cut off: <tool_call>\n{"name": "f", "argu'),
    (
        "qwen3_coder",
        "<tool_call>\n<function=f>\n<parameter=a>1</parameter>junk\n</function>\n</tool_call>",
    ),
    ("qwen3_coder", "<tool_call>\nno function here\n</tool_call>"),
    ("seed_oss", "<seed:tool_call>garbage</seed:tool_call>"),
    ("glm45", "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1\n</tool_call>"),
    ("glm47", "<tool_call></tool_call>"),
    (
        "minimax_m2",
        '<minimax:tool_call>\n<invoke name="f">\n<parameter name="a">1\n</invoke>\n'
        "</minimax:tool_call>",
    ),
    (
        "step3",
        "<｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜>"
        '<steptml:invoke name="f">oops</steptml:invoke><｜tool_call_end｜><｜tool_calls_end｜>',
    ),
    (
        "deepseek_v32",
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\nloose text\n</｜DSML｜invoke>\n'
        "</｜DSML｜function_calls>",
    ),
    (
        "deepseek_v3",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{bad}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    ),
    (
        "deepseek_v31",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>[1, 2]<｜tool▁call▁end｜>"
        "<｜tool▁calls▁end｜>",
    ),
    (
        "kimi_k2",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0 {no args marker}"
        "<|tool_call_end|><|tool_calls_section_end|>",
    ),
    ("mistral", "[TOOL_CALLS]f[ARGS]{not json"),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {}}] trailing words'),
    ("pythonic", "[f(1, 2)]"),
    ("pythonic", "[this is not python"),
    ("llama3_json", '{"name": "f", "parameters": {"a": 1}} and then prose'),
    ("json", '{"not_a_call": true}'),
    ("cohere", '<|START_ACTION|>{"tool_name": invalid}<|END_ACTION|>'),
    (
        "openai",
        "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{oops<|call|>",
    ),
    ("granite", "<|tool_call|>[{]"),
    ("jamba", "<tool_calls>nope</tool_calls>"),
    ("phi4_mini_json", "functools[{]"),
    ("internlm", "<|action_start|><|plugin|>{}<|action_end|>"),
]

_SPECIFIC: list[ToolVector] = [
    # Qwen3 model card: a call after reasoning-free content, arguments as a JSON object.
    ToolVector(
        "hermes-qwen-card",
        "hermes",
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": '
        '"San Francisco, CA, USA"}}\n</tool_call>',
        None,
        [("get_current_temperature", {"location": "San Francisco, CA, USA"})],
    ),
    # Text after the calls stays content; whitespace framing the calls is dropped.
    ToolVector(
        "hermes-text-around",
        "hermes",
        'Checking.\n<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>\nDone.',
        "Checking.Done.",
        [("ping", {})],
    ),
    ToolVector("hermes-plain", "hermes", PLAIN, PLAIN, []),
    ToolVector("deepseek_v3-plain", "deepseek_v3", PLAIN, PLAIN, []),
    ToolVector("openai-plain", "openai", PLAIN, PLAIN, []),
    ToolVector("kimi_k2-plain", "kimi_k2", PLAIN, PLAIN, []),
    ToolVector("mistral-plain", "mistral", PLAIN, PLAIN, []),
    ToolVector("llama3_json-plain", "llama3_json", PLAIN, PLAIN, []),
    ToolVector("pythonic-plain", "pythonic", PLAIN, PLAIN, []),
    ToolVector("json-plain", "json", PLAIN, PLAIN, []),
    ToolVector("glm45-plain", "glm45", PLAIN, PLAIN, []),
    ToolVector("cohere-plain", "cohere", PLAIN, PLAIN, []),
    # Schema-aware typing: "42" is a string where the schema says so, a number otherwise.
    ToolVector(
        "qwen3_coder-schema-types",
        "qwen3_coder",
        render_qwen3_coder([("get_weather", {"city": "42", "days": 7, "metric": False})]),
        None,
        [("get_weather", {"city": "42", "days": 7, "metric": False})],
        TOOLS,
    ),
    ToolVector(
        "qwen3_coder-no-schema-is-string",
        "qwen3_coder",
        "<tool_call>\n<function=f>\n<parameter=n>\n42\n</parameter>\n</function>\n</tool_call>",
        None,
        [("f", {"n": "42"})],
    ),
    ToolVector(
        "glm45-no-schema-guesses-json",
        "glm45",
        "<tool_call>f\n<arg_key>n</arg_key>\n<arg_value>42</arg_value>\n"
        "<arg_key>s</arg_key>\n<arg_value>hello world</arg_value>\n</tool_call>",
        None,
        [("f", {"n": 42, "s": "hello world"})],
    ),
    ToolVector(
        "glm45-schema-string-stays-string",
        "glm45",
        "<tool_call>tag\n<arg_key>code</arg_key>\n<arg_value>007</arg_value>\n</tool_call>",
        None,
        [("tag", {"code": "007"})],
        TOOLS,
    ),
    # Mistral v11 with call ids, and Llama 3.2's bare JSON call without <|python_tag|>.
    ToolVector(
        "mistral-call-id",
        "mistral",
        '[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{"tz": "UTC"}',
        None,
        [("get_time", {"tz": "UTC"})],
    ),
    ToolVector(
        "llama3_json-bare",
        "llama3_json",
        '\n{"name": "get_time", "parameters": {"tz": "UTC"}}',
        None,
        [("get_time", {"tz": "UTC"})],
    ),
    # DeepSeek-V3's template leaves out <｜tool▁calls▁end｜> after a single call.
    ToolVector(
        "deepseek_v3-no-section-end",
        "deepseek_v3",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>ping\n```json\n{}\n```"
        "<｜tool▁call▁end｜>",
        None,
        [("ping", {})],
    ),
    # gpt-oss: the first call follows the generation prompt directly (" to=" right after it).
    ToolVector(
        "openai-after-prompt",
        "openai",
        ' to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>{"tz": "UTC"}'
        "<|call|>",
        None,
        [("get_time", {"tz": "UTC"})],
    ),
    ToolVector(
        "openai-final-then-call",
        "openai",
        "<|channel|>final<|message|>One moment.<|end|><|start|>assistant to=functions.ping"
        "<|channel|>commentary json<|message|>{}<|call|>",
        "One moment.",
        [("ping", {})],
    ),
    ToolVector(
        "cohere-response-markers",
        "cohere",
        '<|START_RESPONSE|>Searching.<|END_RESPONSE|>\n<|START_ACTION|>\n{"tool_name": "search", '
        '"parameters": {"query": "rust"}}\n<|END_ACTION|>',
        "Searching.",
        [("search", {"query": "rust"})],
    ),
]


def tool_vectors() -> list[ToolVector]:
    malformed = [
        ToolVector(f"{parser}-malformed-{i}", parser, text, text, [])
        for i, (parser, text) in enumerate(_MALFORMED)
    ]
    return _generated() + malformed + _SPECIFIC


REASONING_VECTORS: list[ReasoningVector] = [
    ReasoningVector(
        "qwen3-basic",
        "qwen3",
        "<think>\nLet me think.\n</think>\n\nHello!",
        "Let me think.",
        "Hello!",
    ),
    ReasoningVector("qwen3-no-think", "qwen3", "Just an answer <b>.", None, "Just an answer <b>."),
    ReasoningVector(
        "qwen3-thinking-off",
        "qwen3",
        "<think>x</think>y",
        None,
        "<think>x</think>y",
        {"thinking": False},
    ),
    ReasoningVector(
        "qwen3-unicode",
        "qwen3",
        "<think>考虑一下 🤔 a<b</think>答案是 42",
        "考虑一下 🤔 a<b",
        "答案是 42",
    ),
    ReasoningVector(
        "qwen3-prompt-in-reasoning",
        "qwen3",
        "hmm\n</think>\n\nok",
        "hmm",
        "ok",
        {"prompt_in_reasoning": True},
    ),
    ReasoningVector("qwen3-unfinished", "qwen3", "<think>still going <", "still going <", None),
    ReasoningVector(
        "qwen3_thinking-basic",
        "qwen3_thinking",
        "step 1\nstep 2\n</think>\n\nDone",
        "step 1\nstep 2",
        "Done",
    ),
    ReasoningVector("deepseek_r1-with-tag", "deepseek_r1", "<think>\nr\n</think>\n\nc", "r", "c"),
    ReasoningVector(
        "deepseek_r1-without-tag", "deepseek_r1", "r1 r2</think>c1 c2", "r1 r2", "c1 c2"
    ),
    ReasoningVector(
        "deepseek_r1-no-end", "deepseek_r1", "all reasoning <", "all reasoning <", None
    ),
    ReasoningVector(
        "deepseek_v3-thinking",
        "deepseek_v3",
        "plan</think>answer",
        "plan",
        "answer",
        {"thinking": True},
    ),
    ReasoningVector(
        "deepseek_v3-not-thinking",
        "deepseek_v3",
        "answer </think> text",
        None,
        "answer </think> text",
        {"thinking": False},
    ),
    ReasoningVector("kimi-basic", "kimi", "◁think▷推理◁/think▷答案", "推理", "答案"),
    ReasoningVector("kimi-plain", "kimi", "no ◁ thinking here", None, "no ◁ thinking here"),
    ReasoningVector(
        "kimi_k2-basic",
        "kimi_k2",
        "<think>k2 reasons</think>k2 answers",
        "k2 reasons",
        "k2 answers",
    ),
    ReasoningVector(
        "kimi_k2-tool-section-ends-reasoning",
        "kimi_k2",
        "<think>need the weather <|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
        "need the weather",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
    ),
    ReasoningVector(
        "kimi_k2-thinking-off", "kimi_k2", "direct", None, "direct", {"thinking": False}
    ),
    ReasoningVector(
        "glm45-basic",
        "glm45",
        "\n<think>glm thinks</think>\nglm answers",
        "glm thinks",
        "glm answers",
    ),
    ReasoningVector("glm45-empty", "glm45", "<think></think>\nanswer", None, "answer"),
    ReasoningVector(
        "minimax_m2-basic",
        "minimax_m2",
        "mm reasons\n</think>\n\nmm answers",
        "mm reasons",
        "mm answers",
    ),
    ReasoningVector(
        "step3-basic", "step3", "step reasons</think>step answers", "step reasons", "step answers"
    ),
    ReasoningVector(
        "step3-explicit-think",
        "step3",
        "<think>step reasons</think>step answers",
        "step reasons",
        "step answers",
    ),
    ReasoningVector(
        "cohere_cmd-basic",
        "cohere_cmd",
        "<|START_THINKING|>I should greet.<|END_THINKING|><|START_RESPONSE|>Hello!<|END_RESPONSE|>",
        "I should greet.",
        "Hello!",
    ),
    ReasoningVector(
        "cohere_cmd-plain", "cohere_cmd", "<|START_RESPONSE|>Hi<|END_RESPONSE|>", None, "Hi"
    ),
    ReasoningVector("nemotron-basic", "nemotron", "<think>\nn\n</think>\nm", "n", "m"),
    ReasoningVector("nemotron-off", "nemotron", "m", None, "m", {"thinking": False}),
    ReasoningVector(
        "openai_gptoss-basic",
        "openai_gptoss",
        "<|channel|>analysis<|message|>User says hi.<|end|><|start|>assistant<|channel|>final"
        "<|message|>Hello there!<|return|>",
        "User says hi.",
        "Hello there!",
    ),
    ReasoningVector(
        "openai_gptoss-tool-passthrough",
        "openai_gptoss",
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant to=functions.get_weather"
        '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        "Need weather.",
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
        '{"city": "Paris"}<|call|>',
    ),
    ReasoningVector(
        "openai_gptoss-plain", "openai_gptoss", "no harmony <| here", None, "no harmony <| here"
    ),
    ReasoningVector(
        "openai_gptoss-prompt-in-analysis",
        "openai_gptoss",
        "thinking more<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
        "thinking more",
        "ok",
        {"prompt_in_reasoning": True},
    ),
    ReasoningVector(
        "mistral-basic", "mistral", "[THINK]m thinks[/THINK]m answers", "m thinks", "m answers"
    ),
    ReasoningVector("seed_oss-basic", "seed_oss", "<seed:think>s</seed:think>t", "s", "t"),
]
