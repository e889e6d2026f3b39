"""The two places the engine client reads the wire itself: EmbedResponse's values (embed_wire)
and HPACK header blocks reused while the connection's table is unchanged."""

from __future__ import annotations

import random

import hpack
import numpy as np
import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2, vllm_engine_pb2

from herdsman.engines.base import EngineError
from herdsman.engines.embed_wire import EmbedResponseDecoder
from herdsman.engines.transport.http2 import Http2Connection
from herdsman.engines.transport.keepalive import Keepalive, KeepalivePolicy

VLLM = EmbedResponseDecoder(values_field=1, tokens_field=2)
SGLANG = EmbedResponseDecoder(values_field=5, tokens_field=6)


@pytest.mark.parametrize("dim", [0, 1, 7, 1024])
def test_vllm_embed_response_as_protobuf_encodes_it(dim: int) -> None:
    rng = random.Random(dim)
    values = np.array([rng.uniform(-3, 3) for _ in range(dim)], dtype=np.float32)
    message = vllm_engine_pb2.EmbedResponse(
        embedding=values.tolist(), prompt_tokens=dim + 3, embedding_dim=dim
    )
    out = VLLM.FromString(message.SerializeToString())
    assert out.values.dtype == np.float32
    assert out.values.tolist() == list(message.embedding)
    assert out.prompt_tokens == dim + 3


def test_sglang_embed_response_as_protobuf_encodes_it() -> None:
    message = sglang_scheduler_pb2.EmbedResponse(
        embedding=[0.5, -1.25, 3.0], prompt_tokens=300, embedding_dim=3
    )
    out = SGLANG.FromString(message.SerializeToString())
    assert out.values.tolist() == [0.5, -1.25, 3.0]
    assert out.prompt_tokens == 300


def _key(field: int, kind: int) -> bytes:
    return bytes([field << 3 | kind])


def test_unpacked_values_and_unknown_fields() -> None:
    # A writer may send a repeated float unpacked (one fixed32 per value); parsers accept both,
    # and skip fields they do not know (a varint, a length-delimited, a fixed64).
    data = (
        _key(1, 5)
        + np.float32(1.5).tobytes()
        + _key(9, 0)
        + b"\x96\x01"
        + _key(1, 5)
        + np.float32(-2.0).tobytes()
        + _key(10, 2)
        + b"\x03abc"
        + _key(11, 1)
        + bytes(8)
        + _key(2, 0)
        + b"\x07"
    )
    parsed = vllm_engine_pb2.EmbedResponse.FromString(data)
    out = VLLM.FromString(data)
    assert out.values.tolist() == list(parsed.embedding) == [1.5, -2.0]
    assert out.prompt_tokens == parsed.prompt_tokens == 7


@pytest.mark.parametrize(
    "data",
    [
        _key(1, 2) + b"\x08" + bytes(4),  # a length past the end
        _key(1, 2) + b"\x03abc",  # not whole float32s
        _key(2, 0) + b"\x80",  # an unfinished varint
        _key(1, 3),  # a group: no such thing here
    ],
)
def test_malformed_responses_are_engine_errors(data: bytes) -> None:
    with pytest.raises(EngineError):
        VLLM.FromString(data)


async def test_header_blocks_are_reused_only_while_the_table_is_unchanged() -> None:
    connection = Http2Connection(
        max_message=1 << 20, keepalive=Keepalive(KeepalivePolicy(60, 20)), on_change=lambda _: None
    )
    encoder = hpack.Encoder()
    first = encoder.encode([(b":status", b"200"), (b"x-engine", b"one")])
    assert connection._decode_headers(first) == [(b":status", b"200"), (b"x-engine", b"one")]
    # The same headers again: now references to the dynamic table, the same block every time.
    again = encoder.encode([(b":status", b"200"), (b"x-engine", b"one")])
    assert connection._decode_headers(again) == [(b":status", b"200"), (b"x-engine", b"one")]
    assert connection._decode_headers(again) is connection._decode_headers(again)
    # A new entry moves every dynamic index: the cached meaning of `again` must not survive.
    connection._decode_headers(encoder.encode([(b"x-other", b"two")]))
    assert connection._decode_headers(again) == [(b":status", b"200"), (b"x-other", b"two")]
