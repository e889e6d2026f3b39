"""Meta Llama: 3.x JSON calls (``<|python_tag|>`` or a bare JSON object) and Llama 4's pythonic
``[f(a=1), g(b="x")]`` lists."""

from __future__ import annotations

import ast
from typing import Any

from herdsman.parsers.tool_calls import (
    BlockToolCallParser,
    FoundCall,
    call_from_json,
    dump_arguments,
    json_values,
)

_END_TOKENS = ("<|eom_id|>", "<|eot_id|>", "<|python_end|>")


def _strip_end_tokens(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for token in _END_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)].rstrip()
                changed = True
    return text


class Llama3JsonToolCallParser(BlockToolCallParser):
    """``{"name": "f", "parameters": {...}}`` at the start of the output or after
    ``<|python_tag|>``; several calls separated by ``;``."""

    name = "llama3_json"
    aliases = ("llama", "llama3", "llama4_json")
    needs_special_tokens = True
    start_markers = ("<|python_tag|>",)
    leading_starts = ("{",)
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        calls = [call_from_json(value) for value in json_values(_strip_end_tokens(block))]
        if not calls or any(call is None for call in calls):
            return None
        return [call for call in calls if call is not None]


def _call_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _call_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _literal(node: ast.expr) -> Any:
    value = ast.literal_eval(node)
    if isinstance(value, tuple | set):
        value = list(value)
    return value


class PythonicToolCallParser(BlockToolCallParser):
    """A Python list of keyword-argument calls, the whole output (Llama 3.2/4, ToolACE)."""

    name = "pythonic"
    aliases = ("llama4_pythonic",)
    needs_special_tokens = True
    start_markers = ("<|python_start|>",)
    leading_starts = ("[",)
    end_marker = None

    def parse_block(self, block: str) -> list[FoundCall] | None:
        tree = ast.parse(_strip_end_tokens(block), mode="eval")
        body = tree.body
        nodes = body.elts if isinstance(body, ast.List) else [body]
        calls: list[FoundCall] = []
        for node in nodes:
            if not isinstance(node, ast.Call) or node.args:
                return None
            name = _call_name(node.func)
            if name is None or any(k.arg is None for k in node.keywords):
                return None
            arguments = {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
            calls.append(FoundCall(name, dump_arguments(arguments)))
        return calls or None
