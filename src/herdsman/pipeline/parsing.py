"""Reasoning and tool-call parsing of one choice's text, as it streams.

Text deltas go through the reasoning parser first (reasoning vs content), then the content goes
through the tool-call parser (calls vs plain content). The result is the OpenAI chat delta shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from herdsman.parsers.reasoning import ReasoningParser
from herdsman.parsers.tool_calls import (
    ContentDelta,
    ToolCallArguments,
    ToolCallParser,
    ToolCallStart,
    ToolEvent,
)
from herdsman.pipeline.constraints import ConstrainedCallsParser


@dataclass(slots=True)
class ParsedDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass(slots=True)
class ParserSetup:
    """What a request needs to parse its choices; one ChoiceParser per choice comes from it."""

    reasoning: type[ReasoningParser] | None
    tools: type[ToolCallParser] | None
    tool_specs: list[dict[str, Any]] | None
    thinking: bool | None
    prompt_in_reasoning: bool
    # tool_choice required (None name) or named: the output is read as constrained JSON.
    constrained: bool = False
    function: str | None = None

    def for_choice(self) -> ChoiceParser:
        reasoning = (
            self.reasoning(thinking=self.thinking, prompt_in_reasoning=self.prompt_in_reasoning)
            if self.reasoning is not None
            else None
        )
        tools: ToolCallParser | None
        if self.constrained:
            tools = ConstrainedCallsParser(self.tool_specs, self.function)
        else:
            tools = self.tools(self.tool_specs) if self.tools is not None else None
        return ChoiceParser(reasoning, tools)


class ChoiceParser:
    __slots__ = ("_reasoning", "_tools", "calls", "content", "reasoning")

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolCallParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools
        # Totals, for a non-streamed response.
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}

    def feed(self, text: str) -> ParsedDelta:
        return self._step(text, final=False)

    def finish(self) -> ParsedDelta:
        return self._step("", final=True)

    def _step(self, text: str, *, final: bool) -> ParsedDelta:
        delta = ParsedDelta()
        if self._reasoning is not None:
            reasoning, content = self._reasoning.feed(text) if text else ("", "")
            if final:
                more_reasoning, more_content = self._reasoning.finish()
                reasoning += more_reasoning
                content += more_content
            delta.reasoning = reasoning
        else:
            content = text
        if self._tools is not None:
            events: list[ToolEvent] = self._tools.feed(content) if content else []
            if final:
                events += self._tools.finish()
            content = self._apply(events, delta)
        delta.content = content
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        if content:
            self.content.append(content)
        return delta

    def _apply(self, events: list[ToolEvent], delta: ParsedDelta) -> str:
        content: list[str] = []
        for event in events:
            if isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, ToolCallStart):
                call = {
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
                self.calls[event.index] = call
                delta.tool_calls.append(
                    {
                        "index": event.index,
                        **call,
                        "function": {"name": event.name, "arguments": ""},
                    }
                )
            elif isinstance(event, ToolCallArguments):
                self.calls[event.index]["function"]["arguments"] += event.fragment
                delta.tool_calls.append(
                    {"index": event.index, "function": {"arguments": event.fragment}}
                )
        return "".join(content)

    def message(self) -> dict[str, Any]:
        """The assistant message of a non-streamed response."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self._reasoning is not None:
            message["reasoning_content"] = "".join(self.reasoning) or None
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        elif message["content"] is None:
            message["content"] = ""
        return message
