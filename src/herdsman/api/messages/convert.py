"""An Anthropic Messages request as the chat request the pipeline prepares.

- ``system`` (a string or text blocks, plus any ``system`` messages in the list) becomes one first
  system message; consecutive turns of one role are one turn, as Anthropic combines them.
- user turns: text and image blocks (base64 as a ``data:`` URL, or a URL) are the user message's
  parts; each ``tool_result`` becomes a ``tool`` message, in order, before the rest of the turn.
- assistant turns: text is the content, ``thinking`` the turn's ``reasoning_content``,
  ``tool_use`` and ``mcp_tool_use`` its ``tool_calls`` (arguments: the JSON of ``input``); an
  ``mcp_tool_result`` inside it (the gateway ran the call within the message) is a ``tool``
  message, and what follows it a new assistant message. A final assistant turn is a prefill: the
  answer continues it (the template's ``continue_final_message``).
- tools are function tools (``input_schema`` as ``parameters``); ``tool_choice`` any/tool are
  required/named; ``thinking`` is the template's thinking switch (``enable_thinking``).

Errors name the offending field the way Anthropic's do (``messages.1.content.0``); they are
pipeline ``InvalidRequest``s, which the service answers as ``invalid_request_error``.
"""

from __future__ import annotations

import json
from typing import Any

from herdsman.api.messages.protocol import CountTokensRequest, MessagesRequest, ToolChoice
from herdsman.pipeline.errors import InvalidRequest
from herdsman.protocol.openai import ChatCompletionRequest

Json = dict[str, Any]

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Blocks of Anthropic's server tools and file features: nothing here can run or read them.
_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
    }
)
# A thinking-capable template's switch (Qwen3, DeepSeek, GLM, ...), as chat requests set it.
THINKING_SWITCH = "enable_thinking"


def invalid(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}", where)


def check_supported(body: CountTokensRequest) -> None:
    """Refuse the known fields this gateway cannot honour, rather than quietly drop them."""
    if body.container is not None:
        raise invalid("container", "containers (code execution) are not supported")
    thinking_turns_kept(body.context_management)


def thinking_turns_kept(context_management: Any) -> int | None:
    """``context_management``: how many of the latest assistant turns keep their thinking in the
    prompt (None: all). Claude Code sends ``clear_thinking_20251015`` (often keeping all, a
    no-op); the other edits (clearing tool results past a token count) are refused."""
    if context_management is None:
        return None
    edits = context_management.get("edits") if isinstance(context_management, dict) else None
    if not isinstance(edits, list):
        raise invalid("context_management.edits", "must be a list of edits")
    kept: int | None = None
    for i, edit in enumerate(edits):
        where = f"context_management.edits.{i}"
        kind = edit.get("type") if isinstance(edit, dict) else None
        if kind != "clear_thinking_20251015":
            raise invalid(
                f"{where}.type", f"{kind!r} is not supported; only clear_thinking_20251015 is"
            )
        # Anthropic's default keeps the thinking of the last assistant turn.
        keep = edit.get("keep", {"type": "thinking_turns", "value": 1})
        if keep == "all":
            continue
        shaped = isinstance(keep, dict) and keep.get("type") == "thinking_turns"
        value = keep.get("value") if shaped else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid(
                f"{where}.keep", 'must be "all" or {"type": "thinking_turns", "value": N}'
            )
        kept = value if kept is None else min(kept, value)
    return kept


def to_chat(
    body: CountTokensRequest, model: str, output: list[Json] | None = None
) -> ChatCompletionRequest:
    """The chat request that renders and generates like ``body``. A count_tokens body gives the
    same prompt as the messages body it was taken from (sampling fields aside). ``max_tokens``
    is left to the service, which fits it to the room the prompt leaves. ``output``: the blocks
    of the message generated so far (MCP calls and their results), its assistant turn."""
    messages = body.messages
    if output:
        messages = [*messages, {"role": "assistant", "content": output}]
    messages, prefill = chat_messages(body.system, messages)
    kept = thinking_turns_kept(body.context_management)
    if kept is not None:
        _clear_thinking(messages, kept)
    tools = chat_tools(body.tools)
    tool_choice = chat_tool_choice(body.tool_choice)
    kwargs = template_kwargs(body)
    output = body.output_config
    chat = ChatCompletionRequest(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        response_format=_response_format(output.format if output else None),
        reasoning_effort=output.effort if output else None,
        chat_template_kwargs=kwargs,
        add_generation_prompt=not prefill,
        continue_final_message=prefill,
    )
    if isinstance(body, MessagesRequest):
        chat.temperature = body.temperature
        chat.top_p = body.top_p
        chat.top_k = body.top_k
        chat.stop = [s for s in body.stop_sequences or () if s] or None
        chat.seed = body.seed
        chat.user = body.metadata.user_id if body.metadata else None
        chat.stream = body.stream
    return chat


# --- thinking --------------------------------------------------------------------------------


def template_kwargs(body: CountTokensRequest) -> Json | None:
    """The template variables: the request's own (an extension), with ``thinking`` deciding the
    thinking switch. The budget is checked as Anthropic checks it, but not enforced: thinking
    and answer share ``max_tokens``, as they do at Anthropic."""
    kwargs = dict(body.chat_template_kwargs or {})
    thinking = body.thinking
    if thinking is None:
        return kwargs or None
    if thinking.type == "between_tools":
        raise invalid("thinking.type", "'between_tools' thinking is not supported")
    if thinking.type == "enabled":
        if thinking.budget_tokens is None:
            raise invalid("thinking.budget_tokens", "required when thinking is enabled")
        if isinstance(body, MessagesRequest) and thinking.budget_tokens >= body.max_tokens:
            raise invalid("thinking.budget_tokens", "must be less than max_tokens")
    forced = body.tool_choice is not None and body.tool_choice.type in ("any", "tool")
    if thinking.type != "disabled" and forced:
        raise invalid("tool_choice", "thinking may not be enabled when tool_choice forces tool use")
    # "adaptive" leaves when to think to the model: the switch is on, the model may think little.
    kwargs[THINKING_SWITCH] = thinking.type != "disabled"
    return kwargs


def thinking_shown(body: CountTokensRequest) -> bool:
    """False when the client asked for thinking blocks without their text (display: omitted)."""
    return body.thinking is None or body.thinking.display != "omitted"


# --- messages --------------------------------------------------------------------------------


def chat_messages(system: str | list[Any] | None, messages: list[Any]) -> tuple[list[Json], bool]:
    """The chat messages, and whether the last one is an assistant turn to continue (prefill)."""
    system_parts = _system_parts(system, "system")
    turns: list[tuple[str, list[tuple[Json, str]]]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise invalid(where, "each message must be an object with a role and content")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise invalid(
                f"{where}.role",
                f"unexpected role {role!r}; messages are 'user' or 'assistant' turns "
                "(the system prompt goes in 'system')",
            )
        blocks = _blocks(message.get("content"), f"{where}.content")
        if role == "system":
            system_parts += _system_parts([b for b, _ in blocks], f"{where}.content")
        elif turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)  # Anthropic combines consecutive turns of one role
        else:
            turns.append((role, blocks))
    if not turns:
        raise invalid("messages", "at least one user or assistant message is required")
    out: list[Json] = []
    if system_parts:
        out.append({"role": "system", "content": _content(system_parts)})
    prefill = False
    for n, (role, blocks) in enumerate(turns):
        if role == "user":
            out += _user_turn(blocks)
            continue
        assistant = _assistant_turn(blocks)
        message = assistant[-1]
        # A last turn ending in an assistant message (not in the tool results of calls the
        # gateway ran) is continued.
        if n == len(turns) - 1 and message["role"] == "assistant":
            if message.get("tool_calls"):
                raise invalid(
                    f"messages.{len(messages) - 1}",
                    "the last message is an assistant tool_use without its tool_result",
                )
            if not message["content"] and not message.get("reasoning_content"):
                assistant.pop()  # an empty prefill continues nothing: a generation prompt
            else:
                prefill = True
        out += assistant
    return out, prefill


def _clear_thinking(messages: list[Json], kept: int) -> None:
    """Drop the reasoning of all but the latest ``kept`` assistant turns that have some."""
    for message in reversed(messages):
        if message["role"] == "assistant" and "reasoning_content" in message:
            if kept > 0:
                kept -= 1
            else:
                del message["reasoning_content"]


def _blocks(content: Any, where: str) -> list[tuple[Json, str]]:
    """Content as (block, where) pairs; a string is one text block."""
    if isinstance(content, str):
        return [({"type": "text", "text": content}, where)]
    if not isinstance(content, list):
        raise invalid(where, "content must be a string or a list of content blocks")
    blocks = []
    for j, block in enumerate(content):
        at = f"{where}.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(at, "each content block must be an object with a 'type'")
        blocks.append((block, at))
    return blocks


def _system_parts(system: str | list[Any] | None, where: str) -> list[Json]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    parts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"{where}.{j}", "system content must be text blocks")
        parts.append(_text_part(block, f"{where}.{j}"))
    return parts


def _text_part(block: Json, where: str) -> Json:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid(f"{where}.text", "must be a string")
    return {"type": "text", "text": text}


def _content(parts: list[Json]) -> str | list[Json]:
    """One text part is a string, as a client would write it; anything else stays parts (the
    conversation stage joins text parts for templates that print a string)."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _user_turn(blocks: list[tuple[Json, str]]) -> list[Json]:
    tool_messages: list[Json] = []
    parts: list[Json] = []
    for block, where in blocks:
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind in ("tool_result", "mcp_tool_result"):
            tool_messages.append(_tool_message(block, where))
        elif kind in ("thinking", "redacted_thinking", "tool_use", "mcp_tool_use"):
            raise invalid(f"{where}.type", f"{kind} blocks belong in assistant messages")
        else:
            raise _unsupported(kind, where)
    # A turn of only tool results is only tool messages: no empty user message after them.
    if parts or not tool_messages:
        return [*tool_messages, {"role": "user", "content": _content(parts) if parts else ""}]
    return tool_messages


def _assistant_turn(blocks: list[tuple[Json, str]]) -> list[Json]:
    """An assistant turn's messages: one, unless the turn holds results of MCP calls the gateway
    ran (``mcp_tool_result``): each is a tool message after the assistant message of the calls,
    and the blocks after them a new assistant message, as the model generated them."""
    out: list[Json] = []
    parts: list[Json] = []
    reasoning: list[str] = []
    calls: list[Json] = []
    for block, where in blocks:
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "thinking":
            thinking = block.get("thinking")
            if not isinstance(thinking, str):
                raise invalid(f"{where}.thinking", "must be a string")
            reasoning.append(thinking)
        elif kind == "redacted_thinking":
            # Anthropic's encrypted reasoning: opaque bytes no template can show. Accepted so a
            # conversation held with Anthropic can continue here, and left out of the prompt.
            continue
        elif kind in ("tool_use", "mcp_tool_use"):
            # An MCP call's server_name is not shown: templates know a tool by its name only.
            calls.append(_tool_call(block, where))
        elif kind == "mcp_tool_result":
            if parts or reasoning or calls:
                out.append(_assistant_message(parts, reasoning, calls))
                parts, reasoning, calls = [], [], []
            out.append(_tool_message(block, where))
        elif kind == "mcp_tool_listing":
            # A newer connector's record of a server's tools, sent back for the server to
            # reuse: the tools are listed afresh here, and nothing of it is in the prompt.
            continue
        elif kind in ("image", "tool_result"):
            raise invalid(f"{where}.type", f"{kind} blocks belong in user messages")
        else:
            raise _unsupported(kind, where)
    if parts or reasoning or calls or not out:
        out.append(_assistant_message(parts, reasoning, calls))
    return out


def _assistant_message(parts: list[Json], reasoning: list[str], calls: list[Json]) -> Json:
    message: Json = {"role": "assistant", "content": _content(parts) if parts else None}
    if message["content"] is None and not calls:
        message["content"] = ""
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _unsupported(kind: str, where: str) -> InvalidRequest:
    if kind in _SERVER_BLOCKS:
        return invalid(f"{where}.type", f"{kind} blocks (server tools) are not supported")
    if kind in ("document", "search_result"):
        return invalid(f"{where}.type", f"{kind} blocks are not supported")
    return invalid(f"{where}.type", f"unknown content block type {kind!r}")


def _image_part(block: Json, where: str) -> Json:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"{where}.source", "an image needs a source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if media_type not in _IMAGE_TYPES:
            raise invalid(
                f"{where}.source.media_type",
                f"must be one of {', '.join(sorted(_IMAGE_TYPES))}",
            )
        if not isinstance(data, str) or not data:
            raise invalid(f"{where}.source.data", "must be base64 image data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise invalid(f"{where}.source.url", "must be a URL")
    elif kind == "file":
        raise invalid(f"{where}.source", "file sources need the Files API; send base64 or a URL")
    else:
        raise invalid(f"{where}.source.type", "must be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: Json, where: str) -> Json:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise invalid(f"{where}.tool_use_id", "must be the id of the tool_use it answers")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            at = f"{where}.content.{k}"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text_part(part, at)["text"])
            elif kind == "image":
                # Chat templates render tool results as text: an image here could not reach the
                # model where the client put it.
                raise invalid(f"{at}.type", "images in tool results are not supported")
            else:
                raise invalid(f"{at}.type", "tool result content must be text blocks")
        text = "\n".join(texts)  # as vLLM's Anthropic server joins them
    else:
        raise invalid(f"{where}.content", "must be a string or a list of text blocks")
    if block.get("is_error"):
        # Chat messages have no error flag: the model learns of the failure from the text.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _tool_call(block: Json, where: str) -> Json:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise invalid(f"{where}.name", "must be a non-empty string")
    if not isinstance(arguments, dict):
        raise invalid(f"{where}.input", "must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


# --- tools -----------------------------------------------------------------------------------


def chat_tools(tools: list[Any] | None) -> list[Json] | None:
    """Client tools as chat function tools; Anthropic's server tools are refused."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise invalid(where, "each tool must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise invalid(
                f"{where}.type",
                f"the tool type {kind!r} is a server tool, which this gateway does not run; "
                "send client tools (name, description, input_schema)",
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise invalid(f"{where}.name", "must be a non-empty string")
        if not isinstance(schema, dict):
            raise invalid(f"{where}.input_schema", "must be a JSON schema object")
        if tool.get("input_examples"):
            raise invalid(f"{where}.input_examples", "tool input examples are not supported")
        callers = tool.get("allowed_callers")
        if callers is not None and callers != ["direct"]:
            raise invalid(f"{where}.allowed_callers", "only 'direct' callers are supported")
        function: Json = {"name": name}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        function["parameters"] = schema
        for key in ("strict", "defer_loading"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: ToolChoice | None) -> Any:
    if choice is None:
        return None
    if choice.type == "any":
        return "required"
    if choice.type == "tool":
        if not choice.name:
            raise invalid("tool_choice.name", "required when tool_choice.type is 'tool'")
        return {"type": "function", "function": {"name": choice.name}}
    return choice.type  # auto, none


def max_tool_calls(body: CountTokensRequest) -> int | None:
    """``disable_parallel_tool_use``: at most one tool call (the first) reaches the client."""
    choice = body.tool_choice
    return 1 if choice is not None and choice.disable_parallel_tool_use else None


def _response_format(fmt: Json | None) -> Json | None:
    """``output_config.format`` (structured outputs) as the chat ``response_format``."""
    if fmt is None:
        return None
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise invalid("output_config.format", 'must be {"type": "json_schema", "schema": {...}}')
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
