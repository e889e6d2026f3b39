"""JSON tool calls in a few framings: bare JSON (also what constrained decoding produces for
tool_choice=required), Granite, Jamba, Phi-4-mini and InternLM."""

from __future__ import annotations

import json

from herdsman.parsers.tool_calls import (
    BlockToolCallParser,
    FoundCall,
    call_from_json,
    json_values,
)


def _calls_from_values(text: str) -> list[FoundCall] | None:
    calls: list[FoundCall] = []
    for value in json_values(text):
        for item in value if isinstance(value, list) else [value]:
            call = call_from_json(item)
            if call is None:
                return None
            calls.append(call)
    return calls or None


class JsonToolCallParser(BlockToolCallParser):
    """The whole output is a call object or a list of them: ``[{"name", "arguments"}]``."""

    name = "json"
    aliases = ("generic_json",)
    leading_starts = ("{", "[")
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        return _calls_from_values(block)


class GraniteToolCallParser(BlockToolCallParser):
    """IBM Granite 3.x: ``<|tool_call|>[{"name": ..., "arguments": {...}}]``."""

    name = "granite"
    needs_special_tokens = True
    start_markers = ("<|tool_call|>",)
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        return _calls_from_values(block)


class JambaToolCallParser(BlockToolCallParser):
    """AI21 Jamba: ``<tool_calls>[{"name": ..., "arguments": {...}}]</tool_calls>``."""

    name = "jamba"
    start_markers = ("<tool_calls>",)
    end_marker = "</tool_calls>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        return _calls_from_values(block)


class Phi4MiniJsonToolCallParser(BlockToolCallParser):
    """Phi-4-mini: ``functools[{"name": ..., "arguments": {...}}]`` to the end of the output."""

    name = "phi4_mini_json"
    start_markers = ("functools[",)
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        value = json.loads("[" + block)
        calls = [call_from_json(item) for item in value]
        if not calls or any(call is None for call in calls):
            return None
        return [call for call in calls if call is not None]


class InternLMToolCallParser(BlockToolCallParser):
    """InternLM2: ``<|action_start|><|plugin|>{"name": ..., "parameters": {...}}<|action_end|>``."""

    name = "internlm"
    needs_special_tokens = True
    start_markers = ("<|action_start|><|plugin|>",)
    end_marker = "<|action_end|>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        return _calls_from_values(block)
