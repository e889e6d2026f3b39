"""The two parsers chained as the gateway runs them: the reasoning parser first, the tool-call
parser on its content. Streaming in any chunking gives the one-shot result."""

from __future__ import annotations

from typing import Any

import pytest
from tests.parsers.helpers import chunks, decoded_calls, ids
from tests.parsers.vectors import TOOLS

from herdsman.parsers import registry
from herdsman.parsers.tool_calls import ToolEvent, collect

CASES: list[tuple[str, str, str, str | None, str | None, list[tuple[str, Any]]]] = [
    (
        "qwen3",
        "hermes",
        '<think>\nWeather first.\n</think>\n\nOn it.\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Oslo"}}\n</tool_call>',
        "Weather first.",
        "On it.",
        [("get_weather", {"city": "Oslo"})],
    ),
    (
        "openai_gptoss",
        "openai",
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant to=functions."
        'get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
        "Need weather.",
        None,
        [("get_weather", {"city": "Oslo"})],
    ),
    (
        "kimi_k2",
        "kimi_k2",
        "<think>Two calls.</think>Calling.<|tool_calls_section_begin|><|tool_call_begin|>"
        'functions.get_time:0<|tool_call_argument_begin|>{"tz": "UTC"}<|tool_call_end|>'
        "<|tool_call_begin|>functions.ping:1<|tool_call_argument_begin|>{}<|tool_call_end|>"
        "<|tool_calls_section_end|>",
        "Two calls.",
        "Calling.",
        [("get_time", {"tz": "UTC"}), ("ping", {})],
    ),
    (
        "glm45",
        "glm45",
        "<think>Look it up.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
        "<arg_value>Oslo</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n"
        "</tool_call>",
        "Look it up.",
        None,
        [("get_weather", {"city": "Oslo", "days": 2})],
    ),
    (
        "deepseek_r1",
        "deepseek_v3",
        "Check the weather.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        '<｜tool▁sep｜>get_weather\n```json\n{"city": "Oslo"}\n```<｜tool▁call▁end｜>'
        "<｜tool▁calls▁end｜>",
        "Check the weather.",
        None,
        [("get_weather", {"city": "Oslo"})],
    ),
]


def run(reasoning_name: str, tool_name: str, pieces: list[str]) -> tuple[Any, ...]:
    reasoning_parser = registry.get_reasoning_parser(reasoning_name)()
    tool_parser = registry.get_tool_call_parser(tool_name)(TOOLS, id_factory=ids)
    reasoning: list[str] = []
    events: list[ToolEvent] = []
    for piece in [*pieces, None]:
        r, c = reasoning_parser.finish() if piece is None else reasoning_parser.feed(piece)
        reasoning.append(r)
        events.extend(tool_parser.feed(c))
    events.extend(tool_parser.finish())
    result = collect(events)
    return "".join(reasoning) or None, result.content, decoded_calls(result), result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[1])
def test_chain(case: tuple[Any, ...]) -> None:
    reasoning_name, tool_name, text, reasoning, content, calls = case
    expected = run(reasoning_name, tool_name, [text])
    assert expected[:3] == (reasoning, content, calls)
    for cut in range(len(text) + 1):
        assert run(reasoning_name, tool_name, chunks(text, [cut])) == expected, cut
    assert run(reasoning_name, tool_name, list(text)) == expected
