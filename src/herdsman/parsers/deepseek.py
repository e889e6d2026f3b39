"""DeepSeek: R1 and V3.1 reasoning; V3, V3.1 and V3.2 (DSML) tool calls."""

from __future__ import annotations

import json
import re

from herdsman.parsers._args import convert_value
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, FoundCall, dump_arguments


class DeepSeekR1ReasoningParser(ThinkTagReasoningParser):
    """R1 always reasons; its template puts <think> in the prompt, so output starts inside it."""

    name = "deepseek_r1"
    aliases = ("deepseek-r1",)
    starts_in_reasoning = True
    thinking_off_is_content = False


class DeepSeekV3ReasoningParser(ThinkTagReasoningParser):
    """V3.1/V3.2: the template opens <think> when thinking is on and closes it when off."""

    name = "deepseek_v3"
    aliases = ("deepseek_v31", "deepseek-v31", "deepseek_v32")
    thinking_opens_block = True


_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
_CALLS_END = "<｜tool▁calls▁end｜>"
_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_CALL_END = "<｜tool▁call▁end｜>"
_SEP = "<｜tool▁sep｜>"

_V3_CALL = re.compile(r"\s*(\w*)" + _SEP + r"([^\n]+)\n```(?:json)?\n(.*)\n```\s*", re.DOTALL)


class DeepSeekV3ToolCallParser(BlockToolCallParser):
    """``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>``."""

    name = "deepseek_v3"
    aliases = ("deepseek",)
    start_markers = (_CALL_BEGIN,)
    end_marker = _CALL_END
    section_open = (_CALLS_BEGIN,)
    section_close = (_CALLS_END,)

    def parse_block(self, block: str) -> list[FoundCall] | None:
        match = _V3_CALL.fullmatch(block)
        if match is None:
            return None
        arguments = json.loads(match.group(3))
        if not isinstance(arguments, dict):
            return None
        return [FoundCall(match.group(2).strip(), dump_arguments(arguments))]


class DeepSeekV31ToolCallParser(BlockToolCallParser):
    """``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`` (V3.1; V3.2's chat
    format)."""

    name = "deepseek_v31"
    aliases = ("deepseek31",)
    start_markers = (_CALL_BEGIN,)
    end_marker = _CALL_END
    section_open = (_CALLS_BEGIN,)
    section_close = (_CALLS_END,)

    def parse_block(self, block: str) -> list[FoundCall] | None:
        name, sep, raw = block.partition(_SEP)
        name = name.strip()
        if not sep or not name:
            return None
        arguments = json.loads(raw)
        if not isinstance(arguments, dict):
            return None
        return [FoundCall(name, dump_arguments(arguments))]


_DSML = "｜DSML｜"
_INVOKE_HEAD = re.compile(r'\s*name="([^"]+)"\s*>(.*)', re.DOTALL)
_DSML_PARAM = re.compile(
    r'<｜DSML｜parameter\s+name="([^"]+)"(?:\s+string="(true|false)")?\s*>(.*?)</｜DSML｜parameter>',
    re.DOTALL,
)


class DeepSeekV32ToolCallParser(BlockToolCallParser):
    """DeepSeek-V3.2 DSML: ``<｜DSML｜invoke name="f"><｜DSML｜parameter name="k" string="true">v
    </｜DSML｜parameter></｜DSML｜invoke>`` inside ``<｜DSML｜function_calls>``; ``string="false"``
    values are JSON."""

    name = "deepseek_v32"
    aliases = ("deepseek32", "deepseek_dsml")
    start_markers = (f"<{_DSML}invoke",)
    end_marker = f"</{_DSML}invoke>"
    section_open = (f"<{_DSML}function_calls>",)
    section_close = (f"</{_DSML}function_calls>",)

    def parse_block(self, block: str) -> list[FoundCall] | None:
        head = _INVOKE_HEAD.fullmatch(block)
        if head is None:
            return None
        name, body = head.group(1), head.group(2)
        if body.strip().startswith("{"):
            arguments = json.loads(body)
            return (
                [FoundCall(name, dump_arguments(arguments))]
                if isinstance(arguments, dict)
                else None
            )
        values: dict[str, object] = {}
        last = 0
        for match in _DSML_PARAM.finditer(body):
            if body[last : match.start()].strip():
                return None
            last = match.end()
            key, is_string, raw = match.group(1), match.group(2), match.group(3)
            if is_string == "true":
                values[key] = raw
            elif is_string == "false":
                try:
                    values[key] = json.loads(raw)
                except ValueError:
                    values[key] = convert_value(raw, self.parameter_schema(name, key))
            else:
                values[key] = convert_value(raw, self.parameter_schema(name, key))
        if body[last:].strip():
            return None
        return [FoundCall(name, dump_arguments(values))]
