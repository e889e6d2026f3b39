"""Reasoning and tool-call parsers, one module per model family, found through ``registry``."""

from herdsman.parsers.reasoning import ReasoningParser, thinking_flag
from herdsman.parsers.registry import (
    UnknownParserError,
    auto_select,
    get_reasoning_parser,
    get_tool_call_parser,
    reasoning_parser_names,
    tool_call_parser_names,
)
from herdsman.parsers.tool_calls import (
    ContentDelta,
    ParsedToolCalls,
    ToolCall,
    ToolCallArguments,
    ToolCallParser,
    ToolCallStart,
    ToolEvent,
    collect,
)

__all__ = [
    "ContentDelta",
    "ParsedToolCalls",
    "ReasoningParser",
    "ToolCall",
    "ToolCallArguments",
    "ToolCallParser",
    "ToolCallStart",
    "ToolEvent",
    "UnknownParserError",
    "auto_select",
    "collect",
    "get_reasoning_parser",
    "get_tool_call_parser",
    "reasoning_parser_names",
    "thinking_flag",
    "tool_call_parser_names",
]
