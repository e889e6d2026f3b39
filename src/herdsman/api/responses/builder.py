"""One response as it is generated: parsed steps in, output items and stream events out.

The same builder serves a streamed response (its events go to the client, and to storage for a
background one), a non-streamed one (events dropped, the final object kept) and a replay. The
event sequence is OpenAI's: ``response.created``, ``response.in_progress``, then per output item
``output_item.added``, ``content_part.added``, the deltas, their ``done`` events,
``content_part.done``, ``output_item.done``, and one of ``response.completed`` /
``response.incomplete`` / ``response.failed`` (a cancelled stream just ends).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from herdsman.api.responses.items import new_id
from herdsman.pipeline.parsing import ParsedDelta

Json = dict[str, Any]


# The event family of each text item kind, and what its delta and done events carry besides.
_TEXT_EVENTS = {"reasoning": "response.reasoning_text", "message": "response.output_text"}


def _text_extra(kind: str) -> dict[str, Any]:
    return {"logprobs": []} if kind == "message" else {}


class ResponseBuilder:
    def __init__(self, response: Json, *, keep_events: bool = True) -> None:
        # The response object: fixed fields filled by the caller, output and status kept here.
        self.response = response
        # A non-streamed response needs only its final object: events are numbered, not kept.
        self.keep_events = keep_events
        self.output: list[Json] = response["output"]
        self.events: list[Json] = []
        self._sequence = 0
        self._open: Json | None = None  # the reasoning or message item being written
        self._calls: dict[int, Json] = {}  # parser tool index -> its function_call item
        self._open_call: Json | None = None
        # Item id -> its position in the output (events name it on every delta).
        self._index: dict[str, int] = {}
        # MCP: tool name -> (server label, needs approval); such calls become mcp_call (run by
        # the gateway) or mcp_approval_request items instead of function_call items.
        self.mcp_tools: dict[str, tuple[str, bool]] = {}
        # Items of the current turn that were called: mcp_call (to run), function_call and
        # mcp_approval_request (both end the loop: the client acts on them).
        self.turn_calls: list[Json] = []

    # --- events -----------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.keep_events:
            self.events.append({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1

    def take_events(self) -> list[Json]:
        events, self.events = self.events, []
        return events

    def _snapshot(self) -> Json:
        return copy.deepcopy(self.response) if self.keep_events else {}

    def start(self) -> None:
        self._emit("response.created", response=self._snapshot())
        self._emit("response.in_progress", response=self._snapshot())

    def queued(self) -> None:
        self._emit("response.queued", response=self._snapshot())

    # --- output -----------------------------------------------------------------------------

    def feed(self, delta: ParsedDelta) -> None:
        if delta.reasoning:
            self._text("reasoning", delta.reasoning)
        if delta.content:
            self._text("message", delta.content)
        for call in delta.tool_calls:
            self._call(call)

    def _add_item(self, item: Json) -> int:
        self.output.append(item)
        index = self._index[item["id"]] = len(self.output) - 1
        self._emit("response.output_item.added", output_index=index, item=copy.deepcopy(item))
        return index

    def _text(self, kind: str, text: str) -> None:
        item = self._open
        if item is None or item["type"] != kind:
            self._close_open()
            if kind == "reasoning":
                item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
                part: Json = {"type": "reasoning_text", "text": ""}
            else:
                item = {
                    "id": new_id("msg"),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            index = self._add_item(item)
            item["content"].append(part)
            self._emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=copy.deepcopy(part),
            )
            self._open = item
        item["content"][0]["text"] += text
        self._emit(
            _TEXT_EVENTS[kind] + ".delta",
            item_id=item["id"],
            output_index=self._index[item["id"]],
            content_index=0,
            delta=text,
            **_text_extra(kind),
        )

    def _close_open(self) -> None:
        item = self._open
        if item is not None:
            self._open = None
            index = self._index[item["id"]]
            part = item["content"][0]
            kind = item["type"]
            self._emit(
                _TEXT_EVENTS[kind] + ".done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                **_text_extra(kind),
            )
            if kind == "message":
                item["status"] = "completed"
            self._emit(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=copy.deepcopy(part),
            )
            self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(item))
        self._close_call()

    def _close_call(self) -> None:
        call = self._open_call
        if call is None:
            return
        self._open_call = None
        index = self._index[call["id"]]
        kind = call["type"]
        if kind == "mcp_call":
            # Done once the gateway has run it (mcp_finished).
            self._emit(
                "response.mcp_call_arguments.done",
                item_id=call["id"],
                output_index=index,
                arguments=call["arguments"],
            )
            return
        if kind == "function_call":
            call["status"] = "completed"
            self._emit(
                "response.function_call_arguments.done",
                item_id=call["id"],
                output_index=index,
                name=call["name"],
                arguments=call["arguments"],
            )
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(call))

    def mcp_finished(self, call: Json) -> None:
        """An mcp_call the gateway ran: its output or error is in the item."""
        index = self._index[call["id"]]
        failed = call.get("error") is not None
        self._emit(
            "response.mcp_call.failed" if failed else "response.mcp_call.completed",
            item_id=call["id"],
            output_index=index,
        )
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(call))

    def add_done_item(self, item: Json) -> None:
        """An item that is complete when it appears (MCP tool listings, calls run before the
        first turn)."""
        index = self._add_item(item)
        if item["type"] == "mcp_list_tools":
            self._emit(
                "response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index
            )
            failed = item.get("error") is not None
            self._emit(
                "response.mcp_list_tools.failed" if failed else "response.mcp_list_tools.completed",
                item_id=item["id"],
                output_index=index,
            )
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(item))

    def _call(self, delta: Json) -> None:
        index = delta.get("index", 0)
        call = self._calls.get(index)
        if call is None:
            self._close_open()
            function = delta.get("function") or {}
            name = function.get("name") or ""
            mcp = self.mcp_tools.get(name)
            if mcp is None:
                call = {
                    "id": new_id("fc"),
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": delta.get("id") or new_id("call"),
                    "name": name,
                    "arguments": "",
                }
            elif mcp[1]:
                call = {
                    "id": new_id("mcpr"),
                    "type": "mcp_approval_request",
                    "server_label": mcp[0],
                    "name": name,
                    "arguments": "",
                }
            else:
                call = {
                    "id": new_id("mcp"),
                    "type": "mcp_call",
                    "status": "in_progress",
                    "server_label": mcp[0],
                    "name": name,
                    "arguments": "",
                    "output": None,
                    "error": None,
                }
            self._calls[index] = call
            self.turn_calls.append(call)
            output_index = self._add_item(call)
            if call["type"] == "mcp_call":
                self._emit(
                    "response.mcp_call.in_progress", item_id=call["id"], output_index=output_index
                )
            self._open_call = call
            fragment = function.get("arguments") or ""
        else:
            fragment = (delta.get("function") or {}).get("arguments") or ""
        if fragment:
            call["arguments"] += fragment
            kind = call["type"]
            if kind != "mcp_approval_request":
                self._emit(
                    "response.mcp_call_arguments.delta"
                    if kind == "mcp_call"
                    else "response.function_call_arguments.delta",
                    item_id=call["id"],
                    output_index=self._index[call["id"]],
                    delta=fragment,
                )

    def close_items(self) -> None:
        """The turn's generation ended: close its open items (its calls stay listed)."""
        self._close_open()

    def next_turn(self) -> None:
        """A new generation of the same response: its tool indexes start again at 0."""
        self._close_open()
        self._calls = {}
        self.turn_calls = []

    # --- the end ----------------------------------------------------------------------------

    def finish(self, finish_reason: str | None, usage: Json) -> None:
        """Close what is open; the status follows the finish reason (``length``: incomplete;
        ``max_tool_calls``: the MCP loop hit its limit)."""
        self._close_open()
        self.response["usage"] = usage
        self.response["completed_at"] = int(time.time())
        if finish_reason in ("length", "max_tool_calls"):
            self.response["status"] = "incomplete"
            reason = "max_output_tokens" if finish_reason == "length" else "max_tool_calls"
            self.response["incomplete_details"] = {"reason": reason}
            self._emit("response.incomplete", response=self._snapshot())
        else:
            self.response["status"] = "completed"
            self._emit("response.completed", response=self._snapshot())

    def fail(self, code: str, message: str) -> None:
        self._close_open()
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        self._emit("response.failed", response=self._snapshot())

    def cancel(self) -> None:
        self._close_open()
        # OpenAI has no event for it: a cancelled response's stream just ends.
        self.response["status"] = "cancelled"
