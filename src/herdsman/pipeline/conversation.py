"""The conversation a chat template is given, built as vLLM's OpenAI server builds it.

A prompt must be the same token for token whether a model is served by vLLM's own server or by
herdsman in front of vLLM's engine, so the messages, tools and template variables are shaped the
way vLLM shapes them (``parse_chat_messages``, ``_postprocess_messages``,
``safe_apply_chat_template``, ``build_chat_params``), not passed through as the client sent them:

- only the fields vLLM keeps reach the template; a message without content has empty content;
- text content is one string (parts joined by newlines, empty parts skipped) for templates that
  print it, and a list of text parts for templates that loop over it (content_format.py);
- assistant tool-call arguments are objects (a JSON string parsed; anything else ``{}``);
- ``reasoning_content`` is the older name of ``reasoning``; both reach an assistant turn;
- Claude Code's per-request billing header line is dropped from system text (it would defeat the
  prefix cache);
- for templates without a developer role, developer messages become system messages, merged
  into one first system message;
- tools are given in OpenAI's shape with every field present (``description`` and
  ``parameters`` null when absent) and unknown fields dropped;
- a template variable set to null or "auto" counts as not set; ``reasoning_effort`` reaches the
  template and, unless the request says otherwise, turns ``enable_thinking`` on or off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from herdsman.pipeline.errors import InvalidRequest
from herdsman.tokenizer import ChatTemplate

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Message fields that templates treat as text.
_STRING_FIELDS = ("name", "tool_call_id", "reasoning_content", "reasoning")
_BILLING_HEADER = "x-anthropic-billing-header"
_UNSET = (None, "auto")


def build_conversation(
    messages: list[dict[str, Any]], template: ChatTemplate
) -> list[dict[str, Any]]:
    if not messages:
        raise InvalidRequest("messages must not be empty", "messages")
    parts_wanted = template.content_format == "openai"
    out = [_message(message, i, parts_wanted) for i, message in enumerate(messages)]
    if not template.supports_developer and any(m["role"] == "developer" for m in out):
        out = _developer_as_system(out)
    return out


def _message(message: dict[str, Any], index: int, parts_wanted: bool) -> dict[str, Any]:
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}", f"messages[{index}].role")
    if "content" not in message and not message.get("tool_calls"):
        raise InvalidRequest("a message needs 'content'", f"messages[{index}].content")
    for key in _STRING_FIELDS:
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"'{key}' must be a string", f"messages[{index}].{key}")
    parts = _parts(message.get("content"), index)
    if role == "system":
        parts = _without_billing_header(parts)
    content: str | list[dict[str, Any]]
    if any(p.get("type") != "text" for p in parts):
        content = parts  # images: the vision template places them (the image stage checked)
    elif parts_wanted and role == "tool":
        content = "\n".join(p["text"] for p in parts)  # tool results are text for any template
    elif parts_wanted:
        content = parts
    else:
        content = "\n".join(p["text"] for p in parts if p["text"])
    normalised: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        calls = message.get("tool_calls")
        if calls is not None:
            check_tool_calls(calls, f"messages[{index}].tool_calls")
            if calls:  # an empty list keeps the template on its plain-answer path
                normalised["tool_calls"] = [_with_object_arguments(c) for c in calls]
        reasoning = message.get("reasoning")
        if reasoning is None:
            reasoning = message.get("reasoning_content")
        if reasoning is not None:
            normalised["reasoning"] = reasoning
            normalised["reasoning_content"] = reasoning
    elif role == "tool" and "tool_call_id" in message:
        normalised["tool_call_id"] = message["tool_call_id"]
    if isinstance(message.get("name"), str):
        normalised["name"] = message["name"]
    if isinstance(message.get("task"), str):
        normalised["task"] = message["task"]
    if role == "developer":
        normalised["tools"] = message.get("tools")
    return normalised


def _parts(content: Any, index: int) -> list[dict[str, Any]]:
    """Content as a list of parts: text parts as ``{"type": "text", "text": ...}``, image
    parts as the client sent them."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    where = f"messages[{index}].content"
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    has_images = any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest("each content part needs a 'type'", where)
        kind = part["type"]
        if kind == "image_url" and has_images:
            parts.append(part)
            continue
        if kind != "text":
            raise InvalidRequest(
                f"content parts of type {kind!r} are not supported by this model", where
            )
        if not isinstance(part.get("text"), str):
            raise InvalidRequest("a text part needs a string 'text'", where)
        parts.append({"type": "text", "text": part["text"]})
    return parts


def _without_billing_header(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for part in parts:
        text = part.get("text")
        if (
            part.get("type") == "text"
            and isinstance(text, str)
            and text.startswith(_BILLING_HEADER)
        ):
            rest = text.partition("\n")[2]
            if rest:
                out.append({**part, "text": rest})
            continue
        out.append(part)
    return out


def _developer_as_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Developer messages become system messages; when that leaves a system message anywhere
    but first, or several, they are merged into one first message (blank line between)."""
    converted = []
    for message in messages:
        if message["role"] == "developer":
            message = {k: v for k, v in message.items() if k != "tools"}
            message["role"] = "system"
        converted.append(message)
    systems: list[str] = []
    others: list[dict[str, Any]] = []
    merge = False
    for i, message in enumerate(converted):
        if message["role"] != "system":
            others.append(message)
            continue
        merge = merge or i > 0 or bool(systems)
        content = message["content"]
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content if "text" in p)
        if content:
            systems.append(content)
    if not merge:
        return converted
    return [{"role": "system", "content": "\n\n".join(systems)}, *others]


def _with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call whose arguments are a mapping, as tool-use templates expect (Transformers'
    convention, and what vLLM does): a JSON string is parsed; empty, malformed or non-object
    arguments become ``{}`` so an earlier turn's bad call cannot break every later turn."""
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str) and arguments:
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        arguments = {}
    return {**call, "function": {**call["function"], "arguments": arguments}}


def check_tool_calls(calls: Any, param: str) -> None:
    """An assistant message's tool calls, in OpenAI's shape: what templates index into."""
    if not isinstance(calls, list):
        raise InvalidRequest("tool_calls must be a list", param)
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("each tool call needs a function with a name", f"{param}[{j}]")
        if call.get("type", "function") != "function":
            raise InvalidRequest("tool calls must be of type 'function'", f"{param}[{j}].type")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, (str, dict)):
            raise InvalidRequest(
                "a tool call's arguments must be a JSON string or an object",
                f"{param}[{j}].function.arguments",
            )
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise InvalidRequest("a tool call's id must be a string", f"{param}[{j}].id")


def template_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Tools as vLLM hands them to templates: its request model dumped, so every function has
    ``name``, ``description`` and ``parameters`` (null when absent), in that order, then
    ``strict`` and ``defer_loading`` when given; other fields are dropped."""
    if tools is None:
        return None
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            out.append(tool)  # not a function tool: the tools check upstream decides
            continue
        shaped: dict[str, Any] = {
            "name": function.get("name"),
            "description": function.get("description"),
            "parameters": function.get("parameters"),
        }
        for key in ("strict", "defer_loading"):
            if function.get(key) is not None:
                shaped[key] = function[key]
        if tool.get("defer_loading") is not None and "defer_loading" not in shaped:
            shaped["defer_loading"] = tool["defer_loading"]
        entry: dict[str, Any] = {"type": tool.get("type", "function"), "function": shaped}
        if tool.get("defer_loading") is not None:
            entry["defer_loading"] = tool["defer_loading"]
        out.append(entry)
    return out


def template_variables(
    kwargs: Mapping[str, Any] | None, reasoning_effort: str | None
) -> dict[str, Any]:
    """The request's extra template variables: unset ones (null, "auto") dropped, and
    ``reasoning_effort`` passed on, deciding ``enable_thinking`` unless the request sets it."""
    variables = {k: v for k, v in (kwargs or {}).items() if not _is_unset(v)}
    if reasoning_effort is not None:
        variables["reasoning_effort"] = reasoning_effort
        if "enable_thinking" not in (kwargs or {}):
            variables["enable_thinking"] = reasoning_effort != "none"
    return variables


def _is_unset(value: Any) -> bool:
    return any(value is u or (isinstance(value, str) and value == u) for u in _UNSET)
