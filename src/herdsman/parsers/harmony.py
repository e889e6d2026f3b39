"""OpenAI gpt-oss (harmony): channels for reasoning, answers and tool calls.

Output is a series of messages ``[<|start|>assistant][ to=RECIPIENT]<|channel|>CHANNEL[ to=...]
[ <|constrain|>json]<|message|>BODY<|end|>`` ending in ``<|call|>`` for a tool call and
``<|return|>`` for the last message. The analysis channel is reasoning, final (and commentary
without a recipient) is content, a message addressed ``to=functions.NAME`` is a tool call.

The reasoning parser passes tool-call messages through as content, markers included, so the
tool-call parser behind it still sees them whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from herdsman.parsers._text import find_first, partial_marker_len
from herdsman.parsers.reasoning import ReasoningParser
from herdsman.parsers.tool_calls import (
    ContentDelta,
    FoundCall,
    ToolCallParser,
    ToolEvent,
    dump_arguments,
)

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
TERMINATORS = ("<|end|>", "<|call|>", "<|return|>")
# A message that was not terminated ends where the next one begins.
_BODY_STOPS = (*TERMINATORS, START, CHANNEL)
_HEADER_OPENERS = (START, CHANNEL, " to=", "to=")
_PLAIN_STOPS = (START, CHANNEL)
_MAX_HEADER = 512

_RECIPIENT = re.compile(r"(?:^|\s)to=([^\s<]+)")
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")

_BOUNDARY, _HEADER, _BODY, _PLAIN = range(4)

Event = tuple[str, str]  # ("header" | "body" | "end" | "plain", text)


def header_fields(header: str) -> tuple[str, str | None]:
    """The channel and the recipient named in a message header."""
    channel = _CHANNEL_NAME.search(header)
    recipient = _RECIPIENT.search(header)
    return (channel.group(1) if channel else "", recipient.group(1) if recipient else None)


class HarmonySplitter:
    """Splits harmony text into headers, body deltas, terminators and unframed text."""

    __slots__ = ("_held", "_state")

    def __init__(self, *, in_body: bool = False) -> None:
        self._state = _BODY if in_body else _BOUNDARY
        self._held = ""

    def feed(self, text: str, *, final: bool = False) -> list[Event]:
        buf = self._held + text
        self._held = ""
        out: list[Event] = []
        while buf:
            state = self._state
            if state == _BOUNDARY:
                if any(buf.startswith(p) for p in _HEADER_OPENERS):
                    self._state = _HEADER
                elif not final and any(p.startswith(buf) for p in _HEADER_OPENERS):
                    self._held = buf
                    break
                else:
                    self._state = _PLAIN
            elif state == _HEADER:
                at = buf.find(MESSAGE)
                if at >= 0:
                    out.append(("header", buf[:at]))
                    buf = buf[at + len(MESSAGE) :]
                    self._state = _BODY
                elif final or len(buf) > _MAX_HEADER:
                    out.append(("plain", buf))
                    self._state = _PLAIN
                    buf = ""
                else:
                    self._held = buf
                    break
            elif state == _BODY:
                at, stop = find_first(buf, _BODY_STOPS)
                if at < 0:
                    keep = 0 if final else partial_marker_len(buf, _BODY_STOPS)
                    if len(buf) > keep:
                        out.append(("body", buf[: len(buf) - keep]))
                    self._held = buf[len(buf) - keep :]
                    break
                if at:
                    out.append(("body", buf[:at]))
                if stop in TERMINATORS:
                    out.append(("end", stop))
                    buf = buf[at + len(stop) :]
                else:
                    out.append(("end", ""))
                    buf = buf[at:]
                self._state = _BOUNDARY
            else:
                at, _ = find_first(buf, _PLAIN_STOPS)
                if at < 0:
                    keep = 0 if final else partial_marker_len(buf, _PLAIN_STOPS)
                    if len(buf) > keep:
                        out.append(("plain", buf[: len(buf) - keep]))
                    self._held = buf[len(buf) - keep :]
                    break
                if at:
                    out.append(("plain", buf[:at]))
                buf = buf[at:]
                self._state = _BOUNDARY
        return out

    def plain_body(self, text: str) -> bool:
        """Whether ``text`` is just more of the current message body (the common case)."""
        return self._state == _BODY and not self._held and "<|" not in text and text[-1:] != "<"

    def finish(self) -> list[Event]:
        events = self.feed("", final=True) if self._held else []
        if self._state == _BODY:
            events.append(("end", ""))
        self._state = _BOUNDARY
        return events


class GptOssReasoningParser(ReasoningParser):
    """Analysis channel -> reasoning; final/commentary -> content; tool calls passed through."""

    name = "openai_gptoss"
    aliases = ("gpt_oss", "gpt-oss", "harmony")
    needs_special_tokens = True

    def __init__(self, *, thinking: bool | None = None, prompt_in_reasoning: bool = False) -> None:
        super().__init__(thinking=thinking, prompt_in_reasoning=prompt_in_reasoning)
        self._split = HarmonySplitter(in_body=prompt_in_reasoning)
        self._mode = "reasoning" if prompt_in_reasoning else "content"

    @classmethod
    def prompt_in_reasoning(cls, prompt_text: str) -> bool:
        tail = prompt_text[-256:].rstrip()
        if not tail.endswith(MESSAGE):
            return False
        header = tail[: -len(MESSAGE)]
        header = header[header.rfind(START) + 1 :] if START in header else header
        channel, recipient = header_fields(header)
        return channel == "analysis" and recipient is None

    def feed(self, text: str) -> tuple[str, str]:
        if self._split.plain_body(text):
            return (text, "") if self._mode == "reasoning" else ("", text)
        return self._route(self._split.feed(text))

    def finish(self) -> tuple[str, str]:
        return self._route(self._split.finish())

    def _route(self, events: list[Event]) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        for kind, text in events:
            if kind == "header":
                channel, recipient = header_fields(text)
                if recipient is not None and recipient != "assistant":
                    self._mode = "raw"
                    content.append(text + MESSAGE)
                else:
                    self._mode = "reasoning" if channel == "analysis" else "content"
            elif kind == "body":
                (reasoning if self._mode == "reasoning" else content).append(text)
            elif kind == "end":
                if self._mode == "raw":
                    content.append(text)
                self._mode = "content"
            else:
                content.append(text)
        return "".join(reasoning), "".join(content)


class OpenAIToolCallParser(ToolCallParser):
    """gpt-oss tool calls: ``to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>``.

    Message bodies that are not calls come out as content (the final answer; the analysis
    channel too when no reasoning parser runs in front).
    """

    name = "openai"
    aliases = ("gpt_oss", "gpt-oss", "harmony")
    needs_special_tokens = True

    def __init__(
        self,
        tools: list[dict[str, Any]] | None = None,
        id_factory: Callable[[int], str] | None = None,
    ) -> None:
        super().__init__(tools, id_factory)
        self._split = HarmonySplitter()
        self._call: tuple[str, str] | None = None  # (name, raw header) of the open call
        self._body: list[str] = []

    def feed(self, text: str) -> list[ToolEvent]:
        if self._split.plain_body(text):
            if self._call is not None:
                self._body.append(text)
                return []
            return [ContentDelta(text)]
        return self._route(self._split.feed(text))

    def finish(self) -> list[ToolEvent]:
        events = self._route(self._split.finish())
        if self._call is not None:
            self._close("", events)
        return events

    def _route(self, events: list[Event]) -> list[ToolEvent]:
        out: list[ToolEvent] = []
        for kind, text in events:
            if kind == "header":
                _, recipient = header_fields(text)
                if recipient is not None and recipient != "assistant":
                    name = recipient.removeprefix("functions.")
                    self._call = (name, text)
                    self._body = []
            elif kind == "body":
                if self._call is not None:
                    self._body.append(text)
                else:
                    out.append(ContentDelta(text))
            elif kind == "end":
                if self._call is not None:
                    self._close(text, out)
            else:
                out.append(ContentDelta(text))
        return out

    def _close(self, terminator: str, out: list[ToolEvent]) -> None:
        assert self._call is not None
        name, header = self._call
        body = "".join(self._body)
        self._call = None
        self._body = []
        try:
            arguments = json.loads(body) if body.strip() else {}
        except ValueError:
            arguments = None
        if isinstance(arguments, dict) and name:
            self._emit_calls([FoundCall(name, dump_arguments(arguments))], out)
        else:
            out.append(ContentDelta(header + MESSAGE + body + terminator))
