"""``<invoke name="f"><parameter name="k">v</parameter></invoke>`` bodies (MiniMax-M2, Step3)."""

from __future__ import annotations

import re
from functools import cache

from herdsman.parsers._args import convert_value
from herdsman.parsers._text import trim_newline
from herdsman.parsers.tool_calls import FoundCall, ToolCallParser, dump_arguments


@cache
def _patterns(invoke: str, parameter: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    return (
        re.compile(rf'<{invoke}\s+name="([^"]*)"\s*>(.*?)</{invoke}>', re.DOTALL),
        re.compile(rf'<{parameter}\s+name="([^"]*)"\s*>(.*?)</{parameter}>', re.DOTALL),
    )


def parse_invokes(
    parser: ToolCallParser, text: str, invoke: str, parameter: str
) -> list[FoundCall] | None:
    """All invokes in ``text``; None if anything but whitespace lies between them."""
    invoke_re, param_re = _patterns(invoke, parameter)
    calls: list[FoundCall] = []
    last = 0
    for match in invoke_re.finditer(text):
        if text[last : match.start()].strip():
            return None
        last = match.end()
        name, body = match.group(1).strip(), match.group(2)
        if not name:
            return None
        arguments: dict[str, object] = {}
        inner = 0
        for param in param_re.finditer(body):
            if body[inner : param.start()].strip():
                return None
            inner = param.end()
            key = param.group(1)
            arguments[key] = convert_value(
                trim_newline(param.group(2)), parser.parameter_schema(name, key)
            )
        if body[inner:].strip():
            return None
        calls.append(FoundCall(name, dump_arguments(arguments)))
    if text[last:].strip():
        return None
    return calls or None
