"""Properties every streaming parser keeps: bounded hold-back, no partial markers in content,
nothing swallowed at the end of the stream."""

from __future__ import annotations

import pytest
from tests.parsers.helpers import ids

from herdsman.parsers import registry
from herdsman.parsers.harmony import HarmonySplitter
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.parsers.tool_calls import BlockToolCallParser, ContentDelta

PROSE = "The quick brown fox, naïve café 東京 — jumps; a<b, c>d [1] {2} ``` ok\n" * 40


def _tool_markers(cls: type[BlockToolCallParser]) -> list[str]:
    return [*cls.start_markers, *cls.section_open, *cls.drop_markers]


@pytest.mark.parametrize("name", registry.tool_call_parser_names())
def test_tool_parser_holds_back_only_a_tail(name: str) -> None:
    parser = registry.get_tool_call_parser(name)(None, id_factory=ids)
    if getattr(parser, "leading_starts", ()):
        parser.feed("Plain answer first. ")
    emitted: list[str] = []
    for ch in PROSE:
        for event in parser.feed(ch):
            assert isinstance(event, ContentDelta)
            emitted.append(event.text)
        held = getattr(parser, "_held", "") or getattr(getattr(parser, "_split", None), "_held", "")
        assert len(held) <= 64, held
    for event in parser.finish():
        assert isinstance(event, ContentDelta)
        emitted.append(event.text)
    assert "".join(emitted).rstrip().endswith(PROSE.rstrip())


@pytest.mark.parametrize("name", registry.tool_call_parser_names())
def test_partial_marker_is_held_then_flushed(name: str) -> None:
    cls = registry.get_tool_call_parser(name)
    markers = _tool_markers(cls) if issubclass(cls, BlockToolCallParser) else ["<|channel|>"]
    for marker in markers:
        if len(marker) < 2:
            continue
        for cut in range(1, len(marker)):
            parser = cls(None, id_factory=ids)
            head = "Answer: " if name not in ("json", "pythonic") else ""
            shown = "".join(
                e.text for e in parser.feed(head + marker[:cut]) if isinstance(e, ContentDelta)
            )
            assert marker[:cut] not in shown or marker[:cut] in head
            tail = "".join(e.text for e in parser.finish() if isinstance(e, ContentDelta))
            assert (shown + tail).endswith(marker[:cut])


@pytest.mark.parametrize("name", registry.reasoning_parser_names())
def test_reasoning_parser_holds_back_only_a_tail(name: str) -> None:
    parser = registry.get_reasoning_parser(name)()
    out: list[str] = []
    for ch in PROSE:
        r, c = parser.feed(ch)
        out.append(r + c)
        held = getattr(parser, "_held", "") or getattr(getattr(parser, "_split", None), "_held", "")
        assert len(held) <= 64
    r, c = parser.finish()
    out.append(r + c)
    assert "".join(out).strip() == PROSE.strip()


@pytest.mark.parametrize(
    "name", [n for n in registry.reasoning_parser_names() if n != "openai_gptoss"]
)
def test_reasoning_end_marker_prefix_never_leaks(name: str) -> None:
    cls = registry.get_reasoning_parser(name)
    assert issubclass(cls, ThinkTagReasoningParser)
    for cut in range(1, len(cls.end)):
        parser = cls(prompt_in_reasoning=True)
        reasoning, content = parser.feed("thinking " + cls.end[:cut])
        assert reasoning == "thinking"
        assert content == ""
        tail_reasoning, _ = parser.finish()
        assert tail_reasoning == " " + cls.end[:cut]


def test_prompt_in_reasoning_helpers() -> None:
    qwen = registry.get_reasoning_parser("qwen3")
    assert qwen.prompt_in_reasoning("<|im_start|>assistant\n<think>\n")
    assert not qwen.prompt_in_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not qwen.prompt_in_reasoning("<|im_start|>assistant\n")
    gptoss = registry.get_reasoning_parser("openai_gptoss")
    assert gptoss.prompt_in_reasoning("<|start|>assistant<|channel|>analysis<|message|>")
    assert not gptoss.prompt_in_reasoning("<|start|>assistant<|channel|>final<|message|>")
    assert not gptoss.prompt_in_reasoning("<|start|>assistant")


def test_harmony_unterminated_message_is_flushed() -> None:
    split = HarmonySplitter()
    events = split.feed("<|channel|>final<|message|>partial answer <|en")
    events += split.finish()
    assert events == [
        ("header", "<|channel|>final"),
        ("body", "partial answer "),
        ("body", "<|en"),
        ("end", ""),
    ]


def test_default_ids_are_openai_shaped_and_unique() -> None:
    parser = registry.get_tool_call_parser("hermes")()
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>' * 2
    calls = parser.parse(text).calls
    assert [c.name for c in calls] == ["a", "a"]
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)
    assert calls[0].id != calls[1].id
