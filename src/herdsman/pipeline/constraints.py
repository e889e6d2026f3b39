"""tool_choice and response_format as engine constraints, and reading constrained output back.

``tool_choice: required`` constrains the output to a JSON array of ``{"name", "parameters"}``
objects (one of the request's tools each); a named tool constrains it to that tool's parameters.
The engine guarantees the shape, so the output is read as JSON rather than searched for markers.
"""

from __future__ import annotations

import json
from typing import Any

from herdsman.parsers.tool_calls import (
    ContentDelta,
    ToolCallArguments,
    ToolCallParser,
    ToolCallStart,
    ToolEvent,
)
from herdsman.pipeline.errors import InvalidRequest

Constraint = tuple[
    str, str
]  # (json_schema | json_object | regex | grammar | structural_tag, value)


def _functions(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        spec = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("each tool needs a function with a name", "tools")
        found[spec["name"]] = spec.get("parameters") or {"type": "object", "properties": {}}
    return found


def tool_choice_constraint(
    tools: list[dict[str, Any]] | None, tool_choice: Any
) -> tuple[Constraint | None, str | None]:
    """The engine constraint for ``tool_choice`` and, for a named tool, that tool's name."""
    if tool_choice in (None, "none", "auto"):
        return None, None
    functions = _functions(tools)
    if not functions:
        raise InvalidRequest("tool_choice needs tools", "tool_choice")
    if tool_choice == "required":
        schema = {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"name": {"const": name}, "parameters": params},
                        "required": ["name", "parameters"],
                    }
                    for name, params in functions.items()
                ]
            },
        }
        return ("json_schema", json.dumps(schema)), None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in functions:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not in tools", "tool_choice"
            )
        return ("json_schema", json.dumps(functions[name])), name
    raise InvalidRequest(
        "tool_choice must be none, auto, required or a named function", "tool_choice"
    )


def response_format_constraint(
    response_format: dict[str, Any] | None, extra: dict[str, Any]
) -> Constraint | None:
    """``response_format`` plus the regex/grammar extensions vLLM and SGLang accept."""
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return ("json_object", "")
    if kind == "json_schema":
        spec = (response_format or {}).get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema needs a 'schema'", "response_format")
        return ("json_schema", json.dumps(schema))
    if kind == "structural_tag":
        return ("structural_tag", json.dumps(response_format))
    if kind != "text":
        raise InvalidRequest(f"unknown response_format type {kind!r}", "response_format")
    for field, constraint in (
        ("guided_regex", "regex"), ("regex", "regex"),
        ("guided_grammar", "grammar"), ("ebnf", "grammar"),
        ("guided_json", "json_schema"),
    ):  # fmt: skip
        value = extra.get(field)
        if value is not None:
            return (constraint, value if isinstance(value, str) else json.dumps(value))
    return None


class ConstrainedCallsParser(ToolCallParser):
    """Reads output made under ``tool_choice`` required (a JSON array) or named (arguments)."""

    name = "constrained"

    def __init__(self, tools: list[dict[str, Any]] | None, function: str | None) -> None:
        super().__init__(tools)
        self._function = function
        self._buffer: list[str] = []
        self._started = False

    def feed(self, text: str) -> list[ToolEvent]:
        if self._function is None:  # a whole array: read it at the end
            self._buffer.append(text)
            return []
        # Named: the output *is* the arguments, so it streams as argument fragments.
        events: list[ToolEvent] = []
        if not self._started:
            self._started = True
            events.append(ToolCallStart(0, self._new_id(0), self._function))
        if text:
            events.append(ToolCallArguments(0, text))
        return events

    def finish(self) -> list[ToolEvent]:
        if self._function is not None:
            return [] if self._started else self.feed("")
        text = "".join(self._buffer)
        try:
            calls = json.loads(text)
        except ValueError:
            return [ContentDelta(text)] if text else []
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
        ):
            return [ContentDelta(text)]
        events: list[ToolEvent] = []
        for index, call in enumerate(calls):
            events.append(ToolCallStart(index, self._new_id(index), call["name"]))
            events.append(ToolCallArguments(index, json.dumps(call.get("parameters", {}))))
        return events
