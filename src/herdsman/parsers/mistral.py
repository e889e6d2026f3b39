"""Mistral: ``[TOOL_CALLS]`` in both its JSON-list and ``name[ARGS]{...}`` forms; Magistral's
``[THINK]`` reasoning."""

from __future__ import annotations

import json

from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import (
    BlockToolCallParser,
    FoundCall,
    call_from_json,
    dump_arguments,
    json_values,
)

_TOOL_CALLS = "[TOOL_CALLS]"


class MistralReasoningParser(ThinkTagReasoningParser):
    name = "mistral"
    aliases = ("magistral",)
    needs_special_tokens = True
    start = "[THINK]"
    end = "[/THINK]"


class MistralToolCallParser(BlockToolCallParser):
    """Tokenizer v2-v7 write ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``; v11 and
    later write ``[TOOL_CALLS]name[ARGS]{...}`` (optionally ``name[CALL_ID]id[ARGS]{...}``), one
    ``[TOOL_CALLS]`` per call. Calls run to the end of the output."""

    name = "mistral"
    needs_special_tokens = True
    start_markers = (_TOOL_CALLS,)
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        calls: list[FoundCall] = []
        for segment in block.split(_TOOL_CALLS):
            text = segment.strip()
            if not text:
                continue
            if text[0] in "[{":
                for value in json_values(text):
                    for item in value if isinstance(value, list) else [value]:
                        call = call_from_json(item)
                        if call is None:
                            return None
                        calls.append(call)
                continue
            head, sep, raw = text.partition("[ARGS]")
            if not sep:
                return None
            name, _, call_id = head.partition("[CALL_ID]")
            name = name.strip()
            if not name or any(c in name for c in " \n[]{}"):
                return None
            arguments = json.loads(raw)
            if not isinstance(arguments, dict):
                return None
            calls.append(FoundCall(name, dump_arguments(arguments), id=call_id.strip() or None))
        return calls or None
