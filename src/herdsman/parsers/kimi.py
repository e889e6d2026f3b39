"""Moonshot Kimi: Kimi-VL/Kimi-1.5 ``◁think▷`` reasoning, Kimi-K2 thinking and K2 tool calls."""

from __future__ import annotations

import json
import re

from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall, dump_arguments


class KimiReasoningParser(ThinkTagReasoningParser):
    name = "kimi"
    start = "◁think▷"
    end = "◁/think▷"


class KimiK2ReasoningParser(ThinkTagReasoningParser):
    """Kimi-K2-Thinking reasons first, with or without writing the opening <think>."""

    name = "kimi_k2"
    aliases = ("kimi_thinking", "kimi_k25")
    needs_special_tokens = True
    starts_in_reasoning = True
    implicit_ends = ("<|tool_calls_section_begin|>",)


_CALL_ID = re.compile(r"\s*((?:functions\.)?([^\s:<>]+)(?::\d+)?)\s*")


class KimiK2ToolCallParser(BlockToolCallParser):
    """``<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}<|tool_call_end|>``;
    the model's own ``functions.NAME:IDX`` is the call id, as Kimi's template expects it back."""

    name = "kimi_k2"
    aliases = ("kimik2",)
    needs_special_tokens = True
    start_markers = ("<|tool_call_begin|>",)
    end_marker = "<|tool_call_end|>"
    section_open = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
    section_close = ("<|tool_calls_section_end|>", "<|tool_call_section_end|>")

    def parse_block(self, block: str) -> list[FoundCall] | None:
        head, sep, raw = block.partition("<|tool_call_argument_begin|>")
        match = _CALL_ID.fullmatch(head)
        if not sep or match is None:
            return None
        arguments = json.loads(raw)
        if not isinstance(arguments, dict):
            return None
        return [FoundCall(match.group(2), dump_arguments(arguments), id=match.group(1))]
