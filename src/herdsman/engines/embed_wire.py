"""EmbedResponse read straight off the wire into a float32 array.

protobuf's parser turns an embedding into a repeated field that the gateway would then copy into
Python floats, one object per value: for a batch of 64 inputs of 1024 dimensions that was 11% of
the gateway's CPU (bench/embeddings.py, py-spy). The values are a packed run of little-endian
float32s on the wire, so numpy can take them as they are. Both protos' EmbedResponse are three
fields (the values, the prompt's token count, the dimension); only their numbers differ.
Anything else in the message is skipped, as protobuf would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herdsman.engines.base import EmbedOutput, EngineError

if TYPE_CHECKING:
    import numpy as np


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EngineError("truncated EmbedResponse from the engine")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise EngineError("malformed varint in EmbedResponse from the engine")


class EmbedResponseDecoder:
    """``FromString`` for a transport's unary call: bytes in, ``EmbedOutput`` out."""

    def __init__(self, values_field: int, tokens_field: int) -> None:
        self._values = values_field
        self._tokens = tokens_field

    def FromString(self, data: bytes) -> EmbedOutput:
        # numpy is imported here, not at the top: every engine client imports this module, the
        # supervisor's too, and the supervisor must stay small (gateway processes have numpy).
        import numpy as np

        chunks: list[np.ndarray] = []
        singles: list[bytes] = []
        tokens = 0
        pos, end = 0, len(data)
        while pos < end:
            key, pos = _varint(data, pos)
            field, kind = key >> 3, key & 7
            if kind == 0:
                value, pos = _varint(data, pos)
                if field == self._tokens:
                    tokens = value
            elif kind == 2:
                size, pos = _varint(data, pos)
                if pos + size > end:
                    raise EngineError("truncated EmbedResponse from the engine")
                if field == self._values:
                    if size % 4:
                        raise EngineError("EmbedResponse values are not whole float32s")
                    chunks.append(np.frombuffer(data, "<f4", size // 4, pos))
                pos += size
            elif kind == 5:  # a value written unpacked (parsers must accept both)
                if field == self._values:
                    singles.append(data[pos : pos + 4])
                pos += 4
            elif kind == 1:
                pos += 8
            else:
                raise EngineError(f"unexpected wire type {kind} in EmbedResponse")
        if pos != end:
            raise EngineError("truncated EmbedResponse from the engine")
        if singles:
            chunks.append(np.frombuffer(b"".join(singles), "<f4"))
        if not chunks:
            values = np.zeros(0, np.float32)
        else:
            values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        return EmbedOutput(values.astype(np.float32, copy=False), tokens)
