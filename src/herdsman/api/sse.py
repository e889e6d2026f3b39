"""Server-sent event frames, built from byte templates made once per request.

Per token only the text is JSON-encoded; the rest of the frame is a precomputed prefix and a
constant suffix, so a streamed token costs two concatenations and one string encode.
"""

from __future__ import annotations

import msgspec

DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.encode


def encode_json(value: object) -> bytes:
    return _encode(value)


def event(payload: object) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


class ChunkFrames:
    """Frames of one streamed response, chat (``delta.content``) or completion (``text``)."""

    __slots__ = ("_close", "_heads", "_open", "_text_key", "endpoint")

    def __init__(self, request_id: str, created: int, model: str, *, chat: bool) -> None:
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self._open = (
            b'data: {"id":%b,"object":"%b","created":%d,"model":%b,"choices":[{"index":'
            % (
                _encode(request_id),
                obj,
                created,
                _encode(model),
            )
        )
        self._text_key = b'"delta":{"content":' if chat else b'"text":'
        self._close = b"}" if chat else b""
        self._heads: dict[int, bytes] = {}
        self.endpoint = "chat" if chat else "completions"

    def _head(self, index: int) -> bytes:
        head = self._heads.get(index)
        if head is None:
            head = self._heads[index] = self._open + b"%d," % index + self._text_key
        return head

    def text(self, index: int, text: str, logprobs: bytes = b"null", extra: bytes = b"") -> bytes:
        """``extra``: more fields of the choice, already encoded (``,"token_ids":[...]``)."""
        return (
            self._head(index)
            + _encode(text)
            + self._close
            + b',"logprobs":%b,"finish_reason":null%b}]}\n\n' % (logprobs, extra)
        )

    def finish(
        self,
        index: int,
        text: str,
        reason: str,
        stop_reason: str | int | None,
        logprobs: bytes = b"null",
        extra: bytes = b"",
    ) -> bytes:
        return (
            self._head(index)
            + _encode(text)
            + self._close
            + b',"logprobs":%b,"finish_reason":%b,"stop_reason":%b%b}]}\n\n'
            % (logprobs, _encode(reason), _encode(stop_reason), extra)
        )

    def delta(
        self,
        index: int,
        delta: dict[str, object],
        logprobs: bytes = b"null",
        finish: tuple[str, str | int | None] | None = None,
        extra: bytes = b"",
    ) -> bytes:
        """A chat frame with any delta (reasoning_content, tool_calls); built per call."""
        reason, stop_reason = finish if finish is not None else (None, None)
        return self._open + b'%d,"delta":%b,"logprobs":%b,"finish_reason":%b%b%b}]}\n\n' % (
            index,
            _encode(delta),
            logprobs,
            _encode(reason),
            b',"stop_reason":' + _encode(stop_reason) if finish is not None else b"",
            extra,
        )

    def role(self, index: int, top: bytes = b"") -> bytes:
        """A choice's first chat frame; ``top``: fields of the chunk itself, already encoded."""
        return self._open + (
            b'%d,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
            b"%b}\n\n" % (index, top)
        )

    def usage(self, usage: dict[str, object]) -> bytes:
        return self._open[: self._open.rindex(b"[")] + b'[],"usage":%b}\n\n' % _encode(usage)
