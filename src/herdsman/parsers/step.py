"""StepFun Step3: reasoning that opens in the prompt, steptml XML invokes in DeepSeek-style
Unicode frames."""

from __future__ import annotations

from herdsman.parsers._xml import parse_invokes
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall

_SEP = "<｜tool_sep｜>"


class Step3ReasoningParser(ThinkTagReasoningParser):
    name = "step3"
    aliases = ("step3p5",)
    starts_in_reasoning = True
    thinking_off_is_content = False


class Step3ToolCallParser(BlockToolCallParser):
    """``<｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name="f"><steptml:parameter
    name="k">v</steptml:parameter></steptml:invoke><｜tool_call_end｜>``."""

    name = "step3"
    needs_special_tokens = True
    start_markers = ("<｜tool_call_begin｜>",)
    end_marker = "<｜tool_call_end｜>"
    section_open = ("<｜tool_calls_begin｜>",)
    section_close = ("<｜tool_calls_end｜>",)

    def parse_block(self, block: str) -> list[FoundCall] | None:
        kind, sep, body = block.partition(_SEP)
        if not sep or kind.strip() not in ("function", ""):
            return None
        calls = parse_invokes(self, body, "steptml:invoke", "steptml:parameter")
        return calls if calls and len(calls) == 1 else None
