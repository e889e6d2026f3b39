"""Tool-call parsers: turn model output into OpenAI ``tool_calls`` and plain content.

A parser is fed text deltas and returns events: ``ContentDelta`` for text outside calls,
``ToolCallStart`` (index, id, name) when a call is recognised and ``ToolCallArguments`` with
argument JSON fragments. A call is emitted once its closing marker arrives (or at the end of the
output for formats without one), after it has been checked: a call that does not parse comes out
as content, verbatim, never dropped. Text that could still be the start of a marker is held back,
so partial markers never leak into content, and only that tail is ever rescanned.
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from herdsman.parsers._text import find_first, partial_marker_len, rstrip_len


class ContentDelta(msgspec.Struct, frozen=True, gc=False):
    text: str


class ToolCallStart(msgspec.Struct, frozen=True, gc=False):
    index: int
    id: str
    name: str


class ToolCallArguments(msgspec.Struct, frozen=True, gc=False):
    index: int
    fragment: str


ToolEvent = ContentDelta | ToolCallStart | ToolCallArguments


class ToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: str  # JSON text


class ParsedToolCalls(msgspec.Struct):
    content: str | None
    calls: list[ToolCall]


class FoundCall(msgspec.Struct):
    """One call as a block parser recognised it."""

    name: str
    arguments: str  # JSON text
    id: str | None = None  # formats that carry their own ids (Kimi-K2)


def default_call_id(index: int) -> str:
    return "call_" + secrets.token_hex(12)


def collect(events: list[ToolEvent]) -> ParsedToolCalls:
    """Fold a stream of events into the one-shot result."""
    content: list[str] = []
    calls: dict[int, ToolCall] = {}
    for event in events:
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls[event.index] = ToolCall(event.id, event.name, "")
        else:
            calls[event.index].arguments += event.fragment
    text = "".join(content)
    return ParsedToolCalls(text or None, [calls[i] for i in sorted(calls)])


def dump_arguments(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class ToolCallParser(ABC):
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # True when the markers are special tokens, so the gateway must detokenize keeping them.
    needs_special_tokens: ClassVar[bool] = False

    def __init__(
        self,
        tools: list[dict[str, Any]] | None = None,
        id_factory: Callable[[int], str] | None = None,
    ) -> None:
        self.tools = tools or []
        self._new_id = id_factory or default_call_id
        self._index = 0
        self._schemas: dict[str, dict[str, Any]] | None = None

    @abstractmethod
    def feed(self, text: str) -> list[ToolEvent]: ...

    @abstractmethod
    def finish(self) -> list[ToolEvent]: ...

    def parse(self, text: str) -> ParsedToolCalls:
        return collect(self.feed(text) + self.finish())

    def parameter_schema(self, function: str, parameter: str) -> dict[str, Any] | None:
        """The JSON schema of one parameter of one tool, as the request declared it."""
        if self._schemas is None:
            self._schemas = {}
            for tool in self.tools:
                spec = tool.get("function", tool) if isinstance(tool, dict) else None
                if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                    continue
                params = spec.get("parameters")
                props = params.get("properties") if isinstance(params, dict) else None
                self._schemas[spec["name"]] = props if isinstance(props, dict) else {}
        props = self._schemas.get(function)
        schema = props.get(parameter) if props else None
        return schema if isinstance(schema, dict) else None

    def _emit_calls(self, calls: list[FoundCall], events: list[ToolEvent]) -> None:
        for call in calls:
            index = self._index
            self._index += 1
            events.append(ToolCallStart(index, call.id or self._new_id(index), call.name))
            events.append(ToolCallArguments(index, call.arguments))


class BlockToolCallParser(ToolCallParser):
    """Calls framed by markers: content outside, a block of one or more calls inside.

    Subclasses set the markers and ``parse_block``, which turns the text between them into calls
    or returns None when it does not parse. Whitespace right beside a call block is framing and
    is dropped; a block that does not parse comes out as content exactly as written, with the
    whitespace and section markers around it.
    """

    start_markers: ClassVar[tuple[str, ...]] = ()
    # None: the block runs to the end of the output (formats that stop at EOS).
    end_marker: ClassVar[str | None] = None
    # Markers around a group of calls (DeepSeek's <｜tool▁calls▁begin｜>): removed when the
    # group held calls, kept as content when it did not.
    section_open: ClassVar[tuple[str, ...]] = ()
    section_close: ClassVar[tuple[str, ...]] = ()
    # Response framing removed from content wherever it appears (Cohere's <|START_RESPONSE|>).
    drop_markers: ClassVar[tuple[str, ...]] = ()
    # Block openers recognised only at the very start of the output (after whitespace), which
    # belong to the block themselves: the ``{`` of bare JSON calls, the ``[`` of pythonic ones.
    leading_starts: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        tools: list[dict[str, Any]] | None = None,
        id_factory: Callable[[int], str] | None = None,
    ) -> None:
        super().__init__(tools, id_factory)
        self._markers = (
            *self.start_markers,
            *self.section_open,
            *self.section_close,
            *self.drop_markers,
        )
        self._held = ""
        self._inside = False
        self._opener = ""
        self._parts: list[str] = []
        self._size = 0
        self._tail = ""
        self._at_start = bool(self.leading_starts)
        self._after_block = False
        self._gap = ""  # whitespace dropped before the open block, restored if it is malformed
        self._in_section = False
        self._section_calls = False  # the open section (or the last one) held calls
        self._section_pending = ""  # the section opener, not emitted unless the section fails
        self._firsts = "".join(sorted({m[0] for m in self._markers}))

    @abstractmethod
    def parse_block(self, block: str) -> list[FoundCall] | None:
        """The calls in a block, or None if it is malformed."""

    def feed(self, text: str) -> list[ToolEvent]:
        if not (
            self._inside
            or self._held
            or self._at_start
            or self._after_block
            or self._section_pending
        ):
            # Plain content with nothing pending: most deltas end here.
            if not text:
                return []
            for first in self._firsts:
                if first in text:
                    break
            else:
                if not text[-1].isspace():
                    return [ContentDelta(text)]
        events: list[ToolEvent] = []
        if self._inside:
            text = self._feed_inside(text, events)
            if self._inside:
                return events
        self._outside(self._held + text, events, final=False)
        return events

    def finish(self) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        self._close_open_block(events)
        held, self._held = self._held, ""
        if held:
            self._outside(held, events, final=True)
            self._close_open_block(events)
        if self._in_section and self._section_pending:
            events.append(ContentDelta(self._section_pending))
        self._in_section = False
        self._section_pending = ""
        return events

    def _close_open_block(self, events: list[ToolEvent]) -> None:
        if self._inside:
            self._inside = False
            block = "".join(self._parts)
            self._parts = []
            self._close_block(block, "", events)

    def _outside(self, buf: str, events: list[ToolEvent], *, final: bool) -> None:
        self._held = ""
        while buf:
            if self._after_block:
                buf = buf.lstrip()
                if not buf:
                    return
                self._after_block = False
            if self._at_start:
                stripped = buf.lstrip()
                if not stripped:
                    if not final:
                        self._held = buf
                        return
                    break
                opener = next((p for p in self.leading_starts if stripped.startswith(p)), None)
                if opener is not None:
                    self._at_start = False
                    self._open_block("")
                    buf = self._feed_inside(stripped, events)
                    continue
                if not final and any(p.startswith(stripped) for p in self.leading_starts):
                    self._held = buf
                    return
                self._at_start = False
            at, marker = find_first(buf, self._markers)
            if at < 0:
                keep = 0 if final else partial_marker_len(buf, self._markers)
                cut = len(buf) - keep
                if not final:
                    # Whitespace before a call block is framing: hold it until we know.
                    cut = rstrip_len(buf[:cut])
                if cut:
                    self._content(buf[:cut], events)
                self._held = buf[cut:]
                return
            cut = rstrip_len(buf[:at])
            if cut:
                self._content(buf[:cut], events)
            gap = buf[cut:at]
            buf = buf[at + len(marker) :]
            if marker in self.start_markers:
                self._open_block(marker)
                self._gap = gap
                buf = self._feed_inside(buf, events)
            elif marker in self.section_open:
                self._in_section = True
                self._section_calls = False
                self._section_pending = gap + marker
            elif marker in self.section_close:
                # A close after calls (even a stray one, as DeepSeek-V3's template writes after
                # each later call) is framing.
                if self._section_calls or (not self._in_section and self._index > 0):
                    self._after_block = True
                else:
                    events.append(ContentDelta(self._section_pending + gap + marker))
                self._in_section = False
                self._section_pending = ""
            else:
                self._after_block = True
        if buf:
            self._content(buf, events)

    def _content(self, text: str, events: list[ToolEvent]) -> None:
        if self._section_pending:
            # Text inside a section: the section is not a call group after all.
            text = self._section_pending + text
            self._section_pending = ""
        events.append(ContentDelta(text))

    def _open_block(self, opener: str) -> None:
        self._inside = True
        self._gap = ""
        self._opener = opener
        self._parts = []
        self._size = 0
        self._tail = ""

    def _feed_inside(self, text: str, events: list[ToolEvent]) -> str:
        """Add text to the open block; return what follows the block if it closed."""
        end = self.end_marker
        if end is None:
            self._parts.append(text)
            return ""
        window = self._tail + text
        at = window.find(end)
        if at < 0:
            self._parts.append(text)
            self._size += len(text)
            self._tail = window[-(len(end) - 1) :] if len(end) > 1 else ""
            return ""
        self._parts.append(text)
        whole = "".join(self._parts)
        stop = self._size - (len(window) - len(text)) + at
        self._inside = False
        self._parts = []
        self._after_block = self._close_block(whole[:stop], end, events)
        return whole[stop + len(end) :]

    def _close_block(self, block: str, end: str, events: list[ToolEvent]) -> bool:
        """Emit the block's calls, or the block itself as content; True if it held calls."""
        try:
            calls = self.parse_block(block)
        except (ValueError, TypeError, KeyError, AttributeError, SyntaxError, RecursionError):
            calls = None
        if calls:
            self._emit_calls(calls, events)
            self._section_pending = ""
            self._section_calls = True
            return True
        events.append(ContentDelta(self._section_pending + self._gap + self._opener + block + end))
        self._section_pending = ""
        return False


def call_from_json(
    obj: Any,
    name_keys: tuple[str, ...] = ("name",),
    argument_keys: tuple[str, ...] = ("arguments", "parameters"),
) -> FoundCall | None:
    """A call from a JSON object such as ``{"name": ..., "arguments": {...}}``."""
    if not isinstance(obj, dict):
        return None
    name = next((obj[k] for k in name_keys if k in obj), None)
    if not isinstance(name, str) or not name:
        return None
    arguments = next((obj[k] for k in argument_keys if k in obj), None)
    if arguments is None:
        return FoundCall(name, "{}")
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string; it must still be JSON inside.
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        return None
    return FoundCall(name, dump_arguments(arguments))


def json_values(text: str) -> list[Any]:
    """Consecutive JSON values in ``text``, separated by whitespace, commas or semicolons."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n;,":
            i += 1
        if i >= n:
            return values
        value, i = decoder.raw_decode(text, i)
        values.append(value)
