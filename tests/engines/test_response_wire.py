"""A streamed GenerateResponse read by GenerateDecoder (plain chunks in C, herdsman.engines._varint)
gives what protobuf's message gives, for both protocols and for whatever the engine sends."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from herdsman.engines.base import EngineOutput
from herdsman.engines.grpc_engine import GenerateDecoder
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.vllm import VllmEngine

ENGINES = [VllmEngine, SglangScheduler]
IDS = ["vllm", "sglang"]


def _decoder(engine: type[VllmEngine | SglangScheduler]) -> GenerateDecoder:
    return GenerateDecoder(engine.pb2.GenerateResponse, engine.chunk_fields)


def _plain(message: Any) -> bool:
    """A chunk with nothing but ids, counts and index (and SGLang's request_id beside it)."""
    if message.WhichOneof("response") != "chunk":
        return False
    allowed = {"token_ids", "prompt_tokens", "completion_tokens", "cached_tokens", "index"}
    return all(field.name in allowed for field, _ in message.chunk.ListFields())


def _expected(message: Any) -> EngineOutput:
    chunk = message.chunk
    return EngineOutput(
        index=chunk.index,
        token_ids=list(chunk.token_ids),
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        cached_tokens=chunk.cached_tokens,
    )


uint32 = st.integers(0, 2**32 - 1)


@st.composite
def responses(draw: st.DrawFn, engine: type[VllmEngine | SglangScheduler]) -> Any:
    message = engine.pb2.GenerateResponse()
    if engine is SglangScheduler and draw(st.booleans()):
        message.request_id = draw(st.text(max_size=20))
    if draw(st.integers(0, 4)) == 0:
        complete = message.complete
        complete.output_ids.extend(draw(st.lists(uint32, max_size=8)))
        complete.finish_reason = draw(st.sampled_from(["stop", "length"]))
        complete.prompt_tokens = draw(uint32)
        return message
    chunk = message.chunk
    chunk.token_ids.extend(draw(st.lists(uint32, max_size=20)))
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "index"):
        if draw(st.booleans()):
            setattr(chunk, name, draw(uint32))
    extra = draw(st.sampled_from(["none", "none", "logprobs", "input_logprobs", "other"]))
    if extra == "logprobs":
        chunk.output_logprobs.token_ids.extend(list(chunk.token_ids)[:3])
        chunk.output_logprobs.token_logprobs.extend([-0.5] * len(chunk.output_logprobs.token_ids))
    elif extra == "input_logprobs":
        chunk.input_logprobs.token_ids.extend([1, 2])
    elif extra == "other" and engine is SglangScheduler:
        chunk.reasoning_tokens = draw(st.integers(1, 100))
    return message


@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_message_reads_as_protobuf_reads_it(
    engine: type[VllmEngine | SglangScheduler], data: st.DataObject
) -> None:
    message = data.draw(responses(engine))
    decoded = _decoder(engine).FromString(message.SerializeToString())
    if _plain(message):
        # The message of every streamed token takes the C path, and gives the same output.
        assert type(decoded) is EngineOutput
        assert decoded == _expected(message)
    else:
        assert decoded == message  # protobuf's own message, for the Python path


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _len(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
@pytest.mark.parametrize(
    ("chunk", "in_c"),
    [
        # Ids unpacked (a valid encoding of a repeated field), mixed with a packed run.
        (
            _field(1, 0, _varint(5))
            + _len(1, _varint(6) + _varint(300))
            + _field(1, 0, _varint(7)),
            True,
        ),
        # A count given twice: the last one wins.
        (_field(2, 0, _varint(10)) + _field(2, 0, _varint(11)) + _field(3, 0, _varint(1)), True),
        # A count past 32 bits, which protobuf truncates: left to protobuf.
        (_field(3, 0, _varint(2**40 + 3)), False),
        # A field the C reader does not know (a fixed64 at number 15).
        (_field(15, 1, bytes(8)), False),
        (b"", True),
    ],
    ids=["unpacked", "repeated-count", "wide-count", "unknown-field", "empty"],
)
def test_hand_made_encodings_read_as_protobuf_reads_them(
    engine: type[VllmEngine | SglangScheduler], chunk: bytes, in_c: bool
) -> None:
    chunk_field = engine.chunk_fields[0]
    data = _len(chunk_field, chunk)
    message = engine.pb2.GenerateResponse.FromString(data)
    decoded = _decoder(engine).FromString(data)
    assert (type(decoded) is EngineOutput) == in_c
    assert decoded == (_expected(message) if in_c else message)
    # A chunk sent in two parts is merged by protobuf: not read in C.
    twice = data + _len(chunk_field, _field(1, 0, _varint(9)))
    assert _decoder(engine).FromString(twice) == engine.pb2.GenerateResponse.FromString(twice)


@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
@pytest.mark.parametrize(
    "data", [b"\x0a", b"\x0a\x05\x08", b"\x0a\x02\x0a\xff", b"\xff\xff\xff"], ids=repr
)
def test_malformed_messages_fail_as_protobuf_fails(
    engine: type[VllmEngine | SglangScheduler], data: bytes
) -> None:
    try:
        expected: Any = engine.pb2.GenerateResponse.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            _decoder(engine).FromString(data)
    else:
        decoded = _decoder(engine).FromString(data)
        assert decoded == (_expected(expected) if type(decoded) is EngineOutput else expected)
