"""Argument values of the XML-style formats, typed by the tool's JSON schema.

XML formats (Qwen3-Coder, GLM-4.5, MiniMax-M2, Step3, Seed-OSS, DeepSeek DSML) write every value
as bare text; the schema the request declared says whether ``42`` is a number or a string.
"""

from __future__ import annotations

import ast
import json
from typing import Any


def schema_types(schema: dict[str, Any] | None) -> set[str]:
    if not schema:
        return set()
    kinds: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        kinds.add(declared)
    elif isinstance(declared, list):
        kinds.update(t for t in declared if isinstance(t, str))
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            for option in options:
                if isinstance(option, dict):
                    kinds |= schema_types(option)
    if not kinds and "enum" in schema:
        values = schema["enum"]
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            kinds.add("string")
    if not kinds and "properties" in schema:
        kinds.add("object")
    return kinds


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    value = ast.literal_eval(text)  # Python-style literals: True, None, single quotes
    json.dumps(value)  # only JSON-representable values
    return value


def guess_value(text: str) -> Any:
    """A value without a schema: JSON if it reads as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def convert_value(text: str, schema: dict[str, Any] | None, *, untyped: str = "guess") -> Any:
    """Type ``text`` by ``schema``; ``untyped`` is "string" or "guess" for unknown parameters."""
    kinds = schema_types(schema)
    if not kinds:
        return text if untyped == "string" else guess_value(text)
    stripped = text.strip()
    if "null" in kinds and stripped.lower() in ("null", "none"):
        return None
    if kinds & {"integer", "number"}:
        try:
            return int(stripped)
        except ValueError:
            pass
        if "number" in kinds:
            try:
                number = float(stripped)
            except ValueError:
                pass
            else:
                if number == number and number not in (float("inf"), float("-inf")):
                    return int(number) if number.is_integer() and "." not in stripped else number
    if "boolean" in kinds and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if kinds & {"object", "array"}:
        try:
            value = _literal(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
        if isinstance(value, dict | list):
            return value
    if "string" in kinds:
        return text
    # A value that does not fit its schema: keep what the model wrote rather than drop it.
    return guess_value(text)
