"""Qwen: Qwen3 think tags, Hermes-style JSON tool calls (Qwen2.5/Qwen3) and Qwen3-Coder XML."""

from __future__ import annotations

import json
import re

from herdsman.parsers._args import convert_value
from herdsman.parsers._text import trim_newline
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import (
    BlockToolCallParser,
    FoundCall,
    ToolCallParser,
    call_from_json,
    dump_arguments,
)


class Qwen3ReasoningParser(ThinkTagReasoningParser):
    """Hybrid Qwen3: the model opens <think> itself; enable_thinking=false means no reasoning."""

    name = "qwen3"
    aliases = ("qwen",)


class Qwen3ThinkingReasoningParser(ThinkTagReasoningParser):
    """Qwen3 *-Thinking-2507 and QwQ: the template opens <think>, the model only closes it."""

    name = "qwen3_thinking"
    aliases = ("qwen-thinking", "qwq")
    starts_in_reasoning = True
    thinking_off_is_content = False


class HermesToolCallParser(BlockToolCallParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen2.5, Qwen3)."""

    name = "hermes"
    aliases = ("qwen", "qwen25", "qwen3")
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        call = call_from_json(json.loads(block))
        return [call] if call else None


_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)(?:</function>\s*)?", re.DOTALL)


def parse_xml_function(parser: ToolCallParser, block: str) -> FoundCall | None:
    """``<function=NAME><parameter=KEY>VALUE</parameter>...</function>`` (Qwen3-Coder, Seed-OSS)."""
    match = _FUNCTION.fullmatch(block)
    if match is None:
        return None
    name = match.group(1).strip()
    pieces = match.group(2).split("<parameter=")
    if pieces[0].strip():
        return None
    arguments: dict[str, object] = {}
    for piece in pieces[1:]:
        key, sep, rest = piece.partition(">")
        if not sep or not key.strip():
            return None
        value, closed, after = rest.partition("</parameter>")
        if closed and after.strip():
            return None
        key = key.strip()
        arguments[key] = convert_value(
            trim_newline(value), parser.parameter_schema(name, key), untyped="string"
        )
    return FoundCall(name, dump_arguments(arguments))


class Qwen3CoderToolCallParser(BlockToolCallParser):
    """Qwen3-Coder XML calls, argument types from the request's tool schemas."""

    name = "qwen3_coder"
    aliases = ("qwen_coder", "qwen3_xml")
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        call = parse_xml_function(self, block)
        return [call] if call else None
