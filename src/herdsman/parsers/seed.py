"""ByteDance Seed-OSS: ``<seed:think>`` reasoning and ``<seed:tool_call>`` XML calls."""

from __future__ import annotations

from herdsman.parsers.qwen import parse_xml_function
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall


class SeedOssReasoningParser(ThinkTagReasoningParser):
    name = "seed_oss"
    needs_special_tokens = True
    start = "<seed:think>"
    end = "</seed:think>"


class SeedOssToolCallParser(BlockToolCallParser):
    """``<seed:tool_call><function=NAME><parameter=KEY>VALUE</parameter></function>
    </seed:tool_call>``, typed by the tool schemas like Qwen3-Coder's."""

    name = "seed_oss"
    needs_special_tokens = True
    start_markers = ("<seed:tool_call>",)
    end_marker = "</seed:tool_call>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        call = parse_xml_function(self, block)
        return [call] if call else None
