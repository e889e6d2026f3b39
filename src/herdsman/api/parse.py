"""POST /parse/reasoning and POST /parse/function_call: the parsers on their own, for text a
client already has. Request and response shapes are SGLang's (which SMG follows), with the
OpenAI ``tool_calls`` form added beside SGLang's ``calls``."""

from __future__ import annotations

from typing import Any

import msgspec

from herdsman.api.bodies import decode_body, json_response
from herdsman.api.errors import bad_request
from herdsman.http import Request, Response
from herdsman.parsers import registry
from herdsman.parsers.reasoning import ReasoningParser, thinking_flag
from herdsman.parsers.tool_calls import ToolCallParser
from herdsman.pipeline.context import ServedModel, ServingContext


class ParseReasoningRequest(msgspec.Struct, kw_only=True):
    text: str
    # Defaults to the parser of the model named (or of the only model served), when it has one.
    reasoning_parser: str | None = None
    model: str | None = None
    # enable_thinking / thinking, as in a chat request.
    chat_template_kwargs: dict[str, Any] | None = None
    # The prompt already opened the reasoning block (its template ended with <think>).
    prompt_in_reasoning: bool = False


class ParseFunctionCallRequest(msgspec.Struct, kw_only=True):
    text: str
    tool_call_parser: str | None = None
    model: str | None = None
    tools: list[dict[str, Any]] | None = None


def _parser_class(
    param: str, name: str | None, default: str | None, lookup: Any, names: list[str]
) -> Any:
    """The parser class a request names, else the server's; a clear 400 otherwise."""
    name = name or default
    if not name:
        raise bad_request(f"'{param}' is required; one of: {', '.join(names)}", param)
    try:
        return lookup(name)
    except registry.UnknownParserError as exc:
        raise bad_request(str(exc), param) from exc


def _default_model(ctx: ServingContext, model: str | None) -> ServedModel | None:
    """The model whose parsers are the defaults: the one named, else the only one served."""
    if model is None and len(ctx.models) != 1:
        return None
    return ctx.served(model)


def _reasoning_class(
    ctx: ServingContext, name: str | None, model: str | None
) -> type[ReasoningParser]:
    served = _default_model(ctx, model) if name is None else None
    return _parser_class(
        "reasoning_parser",
        name,
        served.reasoning_parser if served is not None else None,
        registry.get_reasoning_parser,
        registry.reasoning_parser_names(),
    )


def _tool_class(ctx: ServingContext, name: str | None, model: str | None) -> type[ToolCallParser]:
    served = _default_model(ctx, model) if name is None else None
    return _parser_class(
        "tool_call_parser",
        name,
        served.tool_call_parser if served is not None else None,
        registry.get_tool_call_parser,
        registry.tool_call_parser_names(),
    )


async def parse_reasoning(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, ParseReasoningRequest)
    parser_class = _reasoning_class(ctx, body.reasoning_parser, body.model)
    parser = parser_class(
        thinking=thinking_flag(body.chat_template_kwargs),
        prompt_in_reasoning=body.prompt_in_reasoning,
    )
    reasoning, content = parser.parse(body.text)
    return json_response({"text": content or "", "reasoning_text": reasoning or ""})


async def parse_function_call(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, ParseFunctionCallRequest)
    parser_class = _tool_class(ctx, body.tool_call_parser, body.model)
    if body.tools is not None and not all(isinstance(t, dict) for t in body.tools):
        raise bad_request("'tools' must be a list of tool objects", "tools")
    result = parser_class(body.tools).parse(body.text)
    return json_response(
        {
            "normal_text": result.content or "",
            "calls": [
                {"tool_index": i, "name": call.name, "parameters": call.arguments}
                for i, call in enumerate(result.calls)
            ],
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in result.calls
            ],
        }
    )
