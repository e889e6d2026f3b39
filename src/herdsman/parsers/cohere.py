"""Cohere Command A / R: ``<|START_THINKING|>`` reasoning and ``<|START_ACTION|>`` tool calls."""

from __future__ import annotations

import json

from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall, call_from_json

_RESPONSE_MARKERS = ("<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_TEXT|>", "<|END_TEXT|>")


class CohereCmdReasoningParser(ThinkTagReasoningParser):
    """Command A Reasoning: thinking, then the answer framed by response markers."""

    name = "cohere_cmd"
    aliases = ("cohere", "command_a")
    needs_special_tokens = True
    start = "<|START_THINKING|>"
    end = "<|END_THINKING|>"
    content_markers = _RESPONSE_MARKERS


class CohereToolCallParser(BlockToolCallParser):
    """``<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "f", "parameters": {...}}]
    <|END_ACTION|>`` (one object or a list of them)."""

    name = "cohere"
    aliases = ("command_a", "cohere_cmd")
    needs_special_tokens = True
    start_markers = ("<|START_ACTION|>",)
    end_marker = "<|END_ACTION|>"
    drop_markers = _RESPONSE_MARKERS

    def parse_block(self, block: str) -> list[FoundCall] | None:
        value = json.loads(block)
        items = value if isinstance(value, list) else [value]
        calls = [call_from_json(item, ("tool_name", "name")) for item in items]
        if not calls or any(call is None for call in calls):
            return None
        return [call for call in calls if call is not None]
