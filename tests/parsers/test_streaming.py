"""Every parser, every vector: one-shot results are the expected ones, and streaming the output
in any chunking (every two-way split, every single character, random splits) gives the same."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.parsers.helpers import (
    check_event_order,
    chunks,
    decoded_calls,
    one_shot_tools,
    stream_reasoning,
    stream_tools,
)
from tests.parsers.vectors import REASONING_VECTORS, ReasoningVector, ToolVector, tool_vectors

TOOL_VECTORS = tool_vectors()


@pytest.mark.parametrize("vector", TOOL_VECTORS, ids=lambda v: v.id)
def test_tool_vector_one_shot(vector: ToolVector) -> None:
    result = one_shot_tools(vector.parser, vector.text, vector.tools)
    assert result.content == vector.content
    assert decoded_calls(result) == [(n, a) for n, a in vector.calls]


@pytest.mark.parametrize("vector", TOOL_VECTORS, ids=lambda v: v.id)
def test_tool_vector_every_split(vector: ToolVector) -> None:
    expected = one_shot_tools(vector.parser, vector.text, vector.tools)
    for cut in range(len(vector.text) + 1):
        result, events = stream_tools(vector.parser, chunks(vector.text, [cut]), vector.tools)
        assert result == expected, f"split at {cut}: {vector.text[:cut]!r} | {vector.text[cut:]!r}"
        check_event_order(events)
    result, events = stream_tools(vector.parser, list(vector.text), vector.tools)
    assert result == expected
    check_event_order(events)


@pytest.mark.parametrize("vector", REASONING_VECTORS, ids=lambda v: v.id)
def test_reasoning_vector_one_shot(vector: ReasoningVector) -> None:
    assert stream_reasoning(vector.parser, [vector.text], **vector.kwargs) == (
        vector.reasoning,
        vector.content,
    )


@pytest.mark.parametrize("vector", REASONING_VECTORS, ids=lambda v: v.id)
def test_reasoning_vector_every_split(vector: ReasoningVector) -> None:
    expected = (vector.reasoning, vector.content)
    for cut in range(len(vector.text) + 1):
        pieces = chunks(vector.text, [cut])
        assert stream_reasoning(vector.parser, pieces, **vector.kwargs) == expected, cut
    assert stream_reasoning(vector.parser, list(vector.text), **vector.kwargs) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tool_random_splits(data: st.DataObject) -> None:
    vector = data.draw(st.sampled_from(TOOL_VECTORS), label="vector")
    cuts = data.draw(st.lists(st.integers(0, len(vector.text)), max_size=12), label="cuts")
    expected = one_shot_tools(vector.parser, vector.text, vector.tools)
    result, events = stream_tools(vector.parser, chunks(vector.text, cuts), vector.tools)
    assert result == expected
    check_event_order(events)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_reasoning_random_splits(data: st.DataObject) -> None:
    vector = data.draw(st.sampled_from(REASONING_VECTORS), label="vector")
    cuts = data.draw(st.lists(st.integers(0, len(vector.text)), max_size=12), label="cuts")
    expected = stream_reasoning(vector.parser, [vector.text], **vector.kwargs)
    assert stream_reasoning(vector.parser, chunks(vector.text, cuts), **vector.kwargs) == expected
