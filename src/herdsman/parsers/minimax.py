"""MiniMax-M2: reasoning that opens in the prompt, ``<minimax:tool_call>`` XML invokes."""

from __future__ import annotations

from herdsman.parsers._xml import parse_invokes
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall


class MiniMaxM2ReasoningParser(ThinkTagReasoningParser):
    """MiniMax-M2 output starts inside reasoning and only closes it with </think>."""

    name = "minimax_m2"
    aliases = ("minimax",)
    starts_in_reasoning = True
    thinking_off_is_content = False


class MiniMaxM2ToolCallParser(BlockToolCallParser):
    """``<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter></invoke>
    </minimax:tool_call>``, several invokes per block, values typed by the tool schema."""

    name = "minimax_m2"
    aliases = ("minimax",)
    needs_special_tokens = True
    start_markers = ("<minimax:tool_call>",)
    end_marker = "</minimax:tool_call>"

    def parse_block(self, block: str) -> list[FoundCall] | None:
        return parse_invokes(self, block, "invoke", "parameter")
