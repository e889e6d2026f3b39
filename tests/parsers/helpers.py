"""Running parsers over chunked text, the way the gateway feeds them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from herdsman.parsers import registry
from herdsman.parsers.tool_calls import (
    ContentDelta,
    ParsedToolCalls,
    ToolCallArguments,
    ToolCallStart,
    ToolEvent,
    collect,
)


def ids(index: int) -> str:
    return f"call_{index:024x}"


def chunks(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def stream_tools(
    parser: str, pieces: Sequence[str], tools: list[dict[str, Any]] | None = None
) -> tuple[ParsedToolCalls, list[ToolEvent]]:
    instance = registry.get_tool_call_parser(parser)(tools, id_factory=ids)
    events: list[ToolEvent] = []
    for piece in pieces:
        events.extend(instance.feed(piece))
    events.extend(instance.finish())
    return collect(events), events


def one_shot_tools(
    parser: str, text: str, tools: list[dict[str, Any]] | None = None
) -> ParsedToolCalls:
    return registry.get_tool_call_parser(parser)(tools, id_factory=ids).parse(text)


def stream_reasoning(
    parser: str, pieces: Sequence[str], **kwargs: Any
) -> tuple[str | None, str | None]:
    instance = registry.get_reasoning_parser(parser)(**kwargs)
    reasoning: list[str] = []
    content: list[str] = []
    for piece in [*pieces, None]:
        r, c = instance.finish() if piece is None else instance.feed(piece)
        reasoning.append(r)
        content.append(c)
    return ("".join(reasoning) or None, "".join(content) or None)


def decoded_calls(result: ParsedToolCalls) -> list[tuple[str, Any]]:
    return [(call.name, json.loads(call.arguments)) for call in result.calls]


def check_event_order(events: list[ToolEvent]) -> None:
    """OpenAI streaming shape: a call's start (with its name) comes before its arguments."""
    started: set[int] = set()
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.index not in started
            assert event.index == len(started)
            assert event.name and event.id
            started.add(event.index)
        elif isinstance(event, ToolCallArguments):
            assert event.index in started
        else:
            assert isinstance(event, ContentDelta)
