"""One message as it is generated: parsed output in, content blocks and Anthropic's events out.

The same builder makes a streamed message (its events go to the client as they come) and a
non-streamed one (events dropped, the final message kept), so both have the same blocks. The
event sequence is Anthropic's: ``message_start``, ``ping``, then per content block
``content_block_start``, its deltas (``thinking_delta``, ``text_delta``, ``input_json_delta``; a
thinking block's ``signature_delta`` last), ``content_block_stop``; then ``message_delta`` (stop
reason, output tokens) and ``message_stop``. A failure after the start is an ``error`` event.

The builder knows nothing of generations: a message made of several generate turns (a server-run
tool between them) feeds it turn after turn and finishes it once. A call of an MCP tool (one of
``mcp_tools``) is an ``mcp_tool_use`` block, streamed as a ``tool_use`` is (its input as
``input_json_delta``s); the service adds its ``mcp_tool_result`` whole (``add_block``).
"""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

from herdsman.api.sse import encode_json
from herdsman.pipeline.parsing import ParsedDelta

Json = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def frame(event: Json) -> bytes:
    """An SSE frame with the ``event:`` line Anthropic's clients dispatch on."""
    return b"event: " + event["type"].encode() + b"\ndata: " + encode_json(event) + b"\n\n"


def error_body(kind: str, message: str) -> Json:
    return {"type": "error", "error": {"type": kind, "message": message}}


class MessageBuilder:
    def __init__(
        self,
        message: Json,
        *,
        keep_events: bool,
        show_thinking: bool = True,
        max_calls: int | None = None,
        mcp_tools: dict[str, str] | None = None,
    ) -> None:
        # The message object: fixed fields filled by the caller, content and stop kept here.
        self.message = message
        self.content: list[Json] = message["content"]
        self.keep_events = keep_events
        # display "omitted": thinking blocks come without their text.
        self.show_thinking = show_thinking
        # disable_parallel_tool_use: the calls of a turn past this many are dropped.
        self.max_calls = max_calls
        # MCP tool name -> its server's name: the calls the gateway runs itself.
        self.mcp_tools = mcp_tools or {}
        # tool_use blocks (the client's tools) in the message: its stop reason is tool_use.
        self.tool_uses = 0
        # This turn's calls of either kind, and its mcp_tool_use blocks.
        self._turn_calls = 0
        self._mcp_uses: list[Json] = []
        # The ids of mcp_tool_use blocks whose input was not a JSON object (cut short, say).
        self.bad_inputs: set[str] = set()
        self.events: list[Json] = []
        self._open: Json | None = None
        self._open_index = -1
        # The parser's tool-call index -> its tool_use block (None: dropped by max_calls).
        self._calls: dict[int, Json | None] = {}
        # A tool_use block's input as the JSON text streamed so far, by block index.
        self._inputs: dict[int, str] = {}
        # Whitespace-only text with no block of its kind open (the blank lines between a
        # thinking block and a tool call): held until real text shows which block it starts.
        self._pending: tuple[str, str] | None = None

    def _emit(self, event: Json) -> None:
        if self.keep_events:
            self.events.append(event)

    def take_events(self) -> list[Json]:
        events, self.events = self.events, []
        return events

    def start(self, input_tokens: int) -> None:
        self.message["usage"] = {"input_tokens": input_tokens, "output_tokens": 0}
        if self.keep_events:
            self._emit({"type": "message_start", "message": copy.deepcopy(self.message)})
            self._emit({"type": "ping"})  # Anthropic sends one at once, proxies see bytes flow

    # --- blocks -------------------------------------------------------------------------------

    def feed(self, delta: ParsedDelta) -> None:
        if delta.reasoning:
            self._text("thinking", delta.reasoning)
        if delta.content:
            self._text("text", delta.content)
        for call in delta.tool_calls:
            self._call(call)

    def _text(self, kind: str, text: str) -> None:
        block = self._open
        if block is not None and block["type"] == kind:
            self._append(kind, text)
            return
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == kind:
            text = pending[1] + text
        if not text.strip():
            self._pending = (kind, text)
            return
        self._start_block(
            {"type": "thinking", "thinking": "", "signature": ""}
            if kind == "thinking"
            else {"type": "text", "text": ""}
        )
        self._append(kind, text)

    def _append(self, kind: str, text: str) -> None:
        block = self._open
        assert block is not None
        if kind == "text":
            block["text"] += text
            delta: Json = {"type": "text_delta", "text": text}
        elif self.show_thinking:
            block["thinking"] += text
            delta = {"type": "thinking_delta", "thinking": text}
        else:
            return
        self._emit({"type": "content_block_delta", "index": self._open_index, "delta": delta})

    def _call(self, delta: Json) -> None:
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        if index not in self._calls:
            if self.max_calls is not None and self._turn_calls >= self.max_calls:
                self._calls[index] = None
                return
            self._pending = None
            name = function.get("name") or ""
            server = self.mcp_tools.get(name)
            started: Json
            if server is None:
                started = {"type": "tool_use", "id": new_id("toolu"), "name": name, "input": {}}
                self.tool_uses += 1
            else:
                started = {
                    "type": "mcp_tool_use",
                    "id": new_id("mcptoolu"),
                    "name": name,
                    "server_name": server,
                    "input": {},
                }
                self._mcp_uses.append(started)
            self._calls[index] = started
            self._turn_calls += 1
            self._start_block(started)
            self._inputs[self._open_index] = ""
        block = self._calls[index]
        fragment = function.get("arguments") or ""
        if block is None or not fragment:
            return
        at = self.content.index(block)
        self._inputs[at] += fragment
        self._emit(
            {
                "type": "content_block_delta",
                "index": at,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            }
        )

    def _start_block(self, block: Json) -> None:
        self._close()
        self.content.append(block)
        self._open, self._open_index = block, len(self.content) - 1
        self._emit(
            {
                "type": "content_block_start",
                "index": self._open_index,
                "content_block": copy.deepcopy(block),
            }
        )

    def _close(self) -> None:
        block, index = self._open, self._open_index
        if block is None:
            return
        self._open = None
        if block["type"] == "thinking":
            # Anthropic signs its thinking so it can check it when sent back, and always sends
            # the signature last; herdsman reads thinking sent back as it is: empty signature.
            self._emit(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": ""},
                }
            )
        elif block["type"] in ("tool_use", "mcp_tool_use"):
            text = self._inputs.get(index, "")
            parsed = _input(text)
            block["input"] = parsed if parsed is not None else {}
            if parsed is None and block["type"] == "mcp_tool_use":
                self.bad_inputs.add(block["id"])
        self._emit({"type": "content_block_stop", "index": index})

    # --- between turns --------------------------------------------------------------------------

    def end_turn(self) -> list[Json]:
        """A generate turn is over: its last block closes, and the next turn's calls are counted
        afresh (its parser numbers them from 0 again). Returns the turn's mcp_tool_use blocks."""
        self._pending = None
        self._close()
        self._calls = {}
        self._turn_calls = 0
        uses, self._mcp_uses = self._mcp_uses, []
        return uses

    def add_block(self, block: Json) -> None:
        """A block made whole (an mcp_tool_result): its start carries it all, then its stop."""
        self._start_block(block)
        self._close()

    def ping(self) -> None:
        """Bytes for the client (and proxies) while the gateway waits on an MCP server."""
        self._emit({"type": "ping"})

    # --- the end ------------------------------------------------------------------------------

    def finish(self, stop_reason: str, stop_sequence: str | None, usage: Json) -> None:
        self._pending = None
        self._close()
        self.message["stop_reason"] = stop_reason
        self.message["stop_sequence"] = stop_sequence
        self.message["usage"] = usage
        self._emit(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
        self._emit({"type": "message_stop"})

    def fail(self, kind: str, message: str) -> None:
        """A failure once the stream started: Anthropic's ``error`` event ends it."""
        self._emit(error_body(kind, message))


def _input(text: str) -> Json | None:
    """A tool_use block's ``input``: the streamed JSON, parsed; None if it is no object (output
    cut short by max_tokens inside the arguments), and the block keeps its empty input."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
