"""Responses items: the client's input normalized to stored items, and items as chat messages.

Every item kept (a response's input, its output, a conversation's items) has the shape the API
returns, with an ``id``; ``to_messages`` turns any sequence of them into the chat messages the
pipeline renders, so a chain of responses or a conversation is replayed through the model's
own chat template.
"""

from __future__ import annotations

import secrets
from typing import Any

from herdsman.pipeline.errors import InvalidRequest

Item = dict[str, Any]

_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
}
_ROLES = ("user", "system", "developer", "assistant")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def normalize_input(value: str | list[Item], field: str = "input") -> list[Item]:
    """The request's ``input`` as items with ids and full shapes (what ``input_items`` lists)."""
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])] if value else []
    if not isinstance(value, list):
        raise InvalidRequest(f"'{field}' must be a string or a list of items", field)
    return [normalize_item(item, f"{field}[{i}]") for i, item in enumerate(value)]


def normalize_item(item: Any, where: str) -> Item:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object", where)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _normalize_message(item, where)
    if kind == "function_call":
        call_id = _string(item, "call_id", where)
        return {
            "type": "function_call",
            "id": _item_id(item, "fc"),
            "call_id": call_id,
            "name": _string(item, "name", where),
            "arguments": _string(item, "arguments", where, empty=True),
            "status": "completed",
        }
    if kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str | list):
            raise InvalidRequest(f"'{where}.output' must be a string or a list of parts", where)
        return {
            "type": "function_call_output",
            "id": _item_id(item, "fco"),
            "call_id": _string(item, "call_id", where),
            "output": output if isinstance(output, str) else _parts_text(output, where),
            "status": "completed",
        }
    if kind == "reasoning":
        content = item.get("content") or []
        summary = item.get("summary") or []
        if not isinstance(content, list) or not isinstance(summary, list):
            raise InvalidRequest(f"'{where}' content and summary must be lists", where)
        return {
            "type": "reasoning",
            "id": _item_id(item, "rs"),
            "summary": [_text_part(p, "summary_text", where) for p in summary],
            "content": [_text_part(p, "reasoning_text", where) for p in content],
        }
    if kind in ("mcp_list_tools", "mcp_call", "mcp_approval_request"):
        # Earlier output sent back as input (the client keeps the context itself).
        if not isinstance(item.get("server_label"), str):
            raise InvalidRequest(f"'{where}.server_label' must be a string", where)
        return {**item, "id": _item_id(item, "mcp")}
    if kind == "mcp_approval_response":
        if not isinstance(item.get("approval_request_id"), str):
            raise InvalidRequest(f"'{where}.approval_request_id' must be a string", where)
        if not isinstance(item.get("approve"), bool):
            raise InvalidRequest(f"'{where}.approve' must be true or false", where)
        return {
            "type": "mcp_approval_response",
            "id": _item_id(item, "mcpa"),
            "approval_request_id": item["approval_request_id"],
            "approve": item["approve"],
            "reason": item.get("reason"),
        }
    if kind == "item_reference":
        raise InvalidRequest(
            f"'{where}': item_reference is not supported; send the item itself, or continue "
            "with previous_response_id or conversation",
            where,
        )
    raise InvalidRequest(f"'{where}' has an unsupported item type {kind!r}", where)


def _normalize_message(item: Item, where: str) -> Item:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(_ROLES)}", where)
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts = [{"type": text_type, "text": content}]
    elif isinstance(content, list):
        parts = [
            _content_part(p, text_type, f"{where}.content[{i}]") for i, p in enumerate(content)
        ]
    else:
        raise InvalidRequest(f"'{where}.content' must be a string or a list of parts", where)
    return _message(role, parts, _item_id(item, "msg"))


def _message(role: str, parts: list[Item], item_id: str | None = None) -> Item:
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "role": role,
        "content": parts,
        "status": "completed",
    }


def _content_part(part: Any, text_type: str, where: str) -> Item:
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{where}' must be an object", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"'{where}.text' must be a string", where)
        out: Item = {"type": text_type, "text": text}
        if text_type == "output_text":
            out["annotations"] = part.get("annotations") or []
        return out
    if kind == "refusal":
        return {"type": "refusal", "refusal": str(part.get("refusal", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if part.get("file_id") is not None:
            raise InvalidRequest(f"'{where}': file_id images are not supported; send a URL", where)
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"'{where}.image_url' must be a URL or a data: URL", where)
        return {"type": "input_image", "image_url": url, "detail": part.get("detail", "auto")}
    if kind in ("input_file", "input_audio"):
        raise InvalidRequest(f"'{where}': {kind} parts are not supported", where)
    raise InvalidRequest(f"'{where}' has an unsupported content part type {kind!r}", where)


def _text_part(part: Any, kind: str, where: str) -> Item:
    if not isinstance(part, dict) or not isinstance(part.get("text"), str):
        raise InvalidRequest(f"'{where}' parts must be objects with a text", where)
    return {"type": kind, "text": part["text"]}


def _parts_text(parts: list[Any], where: str) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{where}.output' parts must carry text", where)
        texts.append(part["text"])
    return "".join(texts)


def _string(item: Item, key: str, where: str, *, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidRequest(f"'{where}.{key}' must be a non-empty string", where)
    return value


def _item_id(item: Item, prefix: str) -> str:
    value = item.get("id")
    return value if isinstance(value, str) and value else new_id(prefix)


# --- items -> chat messages ---------------------------------------------------------------------


def to_messages(items: list[Item], instructions: str | None) -> list[dict[str, Any]]:
    """Chat messages for the template: reasoning rides on the next assistant turn, consecutive
    function calls (and the assistant text before them) make one assistant message with
    ``tool_calls``, each function output is a ``tool`` message."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning: list[str] = []
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning.extend(p["text"] for p in item["content"] or item["summary"])
        elif kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            message: dict[str, Any] = {"role": role, "content": _chat_content(item["content"])}
            if role == "assistant" and reasoning:
                message["reasoning_content"] = "\n".join(reasoning)
                reasoning = []
            messages.append(message)
        elif kind in ("function_call", "mcp_call"):
            call = {
                "id": item.get("call_id") or item["id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:
                last.setdefault("tool_calls", []).append(call)
                if last["content"] == "":
                    last["content"] = None
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                if reasoning:
                    message["reasoning_content"] = "\n".join(reasoning)
                    reasoning = []
                messages.append(message)
            if kind == "mcp_call":
                error = item.get("error")
                output = f"Error: {error}" if error is not None else item.get("output") or ""
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def _chat_content(parts: list[Item]) -> str | list[dict[str, Any]]:
    if all(p["type"] != "input_image" for p in parts):
        return "".join(p.get("text") or p.get("refusal") or "" for p in parts)
    content: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "input_image":
            content.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            content.append({"type": "text", "text": part.get("text") or ""})
    return content


# --- tools --------------------------------------------------------------------------------------


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Function tools in the chat shape; any other tool type is refused."""
    if not tools:
        return None
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object", "tools")
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"'{where}': the tool type {kind!r} is not supported by this gateway; "
                "only function tools are",
                "tools",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"'{where}.name' must be a non-empty string", "tools")
        function: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "none", "required"):
            raise InvalidRequest(
                "'tool_choice' must be auto, none, required or a function", "tool_choice"
            )
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        '\'tool_choice\' objects must be {"type": "function", "name": ...}', "tool_choice"
    )


def chat_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as the chat ``response_format``."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'text.format.schema' must be a JSON schema object", "text")
        spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
        if fmt.get("strict") is not None:
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest(
        f"'text.format.type' {kind!r} is not one of text, json_object, json_schema", "text"
    )
