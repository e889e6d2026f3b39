"""Zhipu GLM-4.5/4.6/4.7: think tags and ``<arg_key>``/``<arg_value>`` tool calls."""

from __future__ import annotations

import re

from herdsman.parsers._args import convert_value
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall, dump_arguments


class Glm45ReasoningParser(ThinkTagReasoningParser):
    name = "glm45"
    aliases = ("glm4_moe", "glm47")
    needs_special_tokens = True


_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


class Glm45ToolCallParser(BlockToolCallParser):
    """``<tool_call>NAME\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n</tool_call>``; a value
    is a string unless the tool's schema (or, without one, its JSON form) says otherwise."""

    name = "glm45"
    aliases = ("glm45_moe", "glm4_moe")
    needs_special_tokens = True
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        at = block.find("<arg_key>")
        name = (block if at < 0 else block[:at]).strip()
        if not name or any(c in name for c in "<>{}\n"):
            return None
        arguments: dict[str, object] = {}
        last = max(at, 0)
        if at >= 0:
            for match in _PAIR.finditer(block, at):
                if block[last : match.start()].strip():
                    return None
                last = match.end()
                key = match.group(1).strip()
                arguments[key] = convert_value(match.group(2), self.parameter_schema(name, key))
            if block[last:].strip():
                return None
        return [FoundCall(name, dump_arguments(arguments))]


class Glm47ToolCallParser(Glm45ToolCallParser):
    """GLM-4.7 writes the same calls without the newlines."""

    name = "glm47"
    aliases = ("glm47_moe",)
