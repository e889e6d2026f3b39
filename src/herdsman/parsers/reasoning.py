"""Reasoning parsers: split model output into reasoning and content, streaming or not.

A parser is fed text deltas and returns ``(reasoning_delta, content_delta)`` for each; it keeps
back only a tail that could still be part of a marker, so the work per delta is proportional to
the delta. ``finish()`` flushes what was held back; nothing is ever swallowed except the markers
themselves and whitespace right beside them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from herdsman.parsers._text import find_first, partial_marker_len, rstrip_len


class ReasoningParser(ABC):
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # True when the markers are special tokens, so the gateway must detokenize keeping them.
    needs_special_tokens: ClassVar[bool] = False

    def __init__(self, *, thinking: bool | None = None, prompt_in_reasoning: bool = False) -> None:
        self.thinking = thinking
        self.starts_in_prompt = prompt_in_reasoning

    @classmethod
    @abstractmethod
    def prompt_in_reasoning(cls, prompt_text: str) -> bool:
        """Whether the rendered prompt already opened a reasoning block (e.g. ends with <think>)."""

    @abstractmethod
    def feed(self, text: str) -> tuple[str, str]: ...

    @abstractmethod
    def finish(self) -> tuple[str, str]: ...

    def parse(self, text: str) -> tuple[str | None, str | None]:
        reasoning, content = self.feed(text)
        tail_reasoning, tail_content = self.finish()
        reasoning += tail_reasoning
        content += tail_content
        return (reasoning or None, content or None)


_PRE = 0  # content, a reasoning block may still open
_LEAD = 1  # reasoning started: skipping leading whitespace and an optional start marker
_REASON = 2
_AFTER = 3  # reasoning ended: skipping whitespace before the content
_CONTENT = 4


class ThinkTagReasoningParser(ReasoningParser):
    """One reasoning block between a start and an end marker (``<think>``/``</think>`` style)."""

    start: ClassVar[str] = "<think>"
    end: ClassVar[str] = "</think>"
    # The model's output begins inside reasoning: the template opened the block, or the model
    # never emits the start marker (DeepSeek-R1, Step3, MiniMax-M2, Qwen3 thinking models).
    starts_in_reasoning: ClassVar[bool] = False
    # thinking=True makes the template open the block in the prompt (DeepSeek-V3.1).
    thinking_opens_block: ClassVar[bool] = False
    # thinking=False means the template closed reasoning already: all output is content.
    thinking_off_is_content: ClassVar[bool] = True
    # Response framing markers removed from content (Cohere's <|START_RESPONSE|>).
    content_markers: ClassVar[tuple[str, ...]] = ()
    # Markers that end reasoning without the end marker and stay in the content (Kimi-K2 may
    # open its tool-call section straight from reasoning).
    implicit_ends: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, thinking: bool | None = None, prompt_in_reasoning: bool = False) -> None:
        super().__init__(thinking=thinking, prompt_in_reasoning=prompt_in_reasoning)
        if prompt_in_reasoning:
            self._state = _LEAD
        elif thinking is False and self.thinking_off_is_content:
            self._state = _CONTENT
        elif self.starts_in_reasoning or (thinking is True and self.thinking_opens_block):
            self._state = _LEAD
        else:
            self._state = _PRE
        self._held = ""
        self._spoke = False  # content other than whitespace was emitted
        self._pre_markers = (self.start, *self.content_markers)
        self._pre_firsts = "".join({m[0] for m in self._pre_markers})
        self._end_markers = (self.end, *self.implicit_ends)
        self._end_firsts = "".join({m[0] for m in self._end_markers})

    @classmethod
    def prompt_in_reasoning(cls, prompt_text: str) -> bool:
        tail = prompt_text[-4096:]
        at = tail.rfind(cls.start)
        if at < 0 or tail.rfind(cls.end) > at:
            return False
        return not tail[at + len(cls.start) :].strip()

    def feed(self, text: str) -> tuple[str, str]:
        if not self._held:
            # Deltas that cannot touch a marker skip the state machine.
            state = self._state
            if state == _CONTENT:
                if not self.content_markers:
                    return "", text
            elif state == _REASON:
                for first in self._end_firsts:
                    if first in text:
                        break
                else:
                    if not text[-1:].isspace():
                        return text, ""
            elif state == _PRE and self._spoke:
                for first in self._pre_firsts:
                    if first in text:
                        break
                else:
                    return "", text
        return self._run(self._held + text, final=False)

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if not held:
            return "", ""
        return self._run(held, final=True)

    def _run(self, buf: str, *, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        self._held = ""
        while buf:
            state = self._state
            if state == _PRE:
                at, marker = find_first(buf, self._pre_markers)
                if at < 0:
                    keep = 0 if final else partial_marker_len(buf, self._pre_markers)
                    cut = len(buf) - keep
                    if not final and not self._spoke and not buf[:cut].strip():
                        # Whitespace before a leading <think> is framing: hold it until we know.
                        cut = 0
                    self._spoke = self._spoke or bool(buf[:cut].strip())
                    content.append(buf[:cut])
                    self._held = buf[cut:]
                    return "".join(reasoning), "".join(content)
                if self._spoke or buf[:at].strip():
                    content.append(buf[:at])
                    self._spoke = True
                buf = buf[at + len(marker) :]
                if marker == self.start:
                    self._state = _LEAD
            elif state == _LEAD:
                stripped = buf.lstrip()
                if not stripped:
                    return "".join(reasoning), "".join(content)
                if stripped.startswith(self.start):
                    buf = stripped[len(self.start) :]
                    continue
                if not final and self.start.startswith(stripped):
                    self._held = stripped
                    return "".join(reasoning), "".join(content)
                self._state = _REASON
                buf = stripped
            elif state == _REASON:
                at, marker = find_first(buf, self._end_markers)
                if at < 0:
                    if final:
                        reasoning.append(buf)
                        return "".join(reasoning), "".join(content)
                    cut = len(buf) - partial_marker_len(buf, self._end_markers)
                    # Whitespace just before the end marker belongs to neither part.
                    cut = rstrip_len(buf[:cut])
                    reasoning.append(buf[:cut])
                    self._held = buf[cut:]
                    return "".join(reasoning), "".join(content)
                reasoning.append(buf[: rstrip_len(buf[:at])])
                if marker == self.end:
                    buf = buf[at + len(marker) :]
                    self._state = _AFTER
                else:
                    buf = buf[at:]  # an implicit end belongs to the content
                    self._state = _CONTENT
            elif state == _AFTER:
                buf = buf.lstrip()
                if buf:
                    self._state = _CONTENT
            else:
                if not self.content_markers:
                    content.append(buf)
                    return "".join(reasoning), "".join(content)
                at, marker = find_first(buf, self.content_markers)
                if at < 0:
                    keep = 0 if final else partial_marker_len(buf, self.content_markers)
                    content.append(buf[: len(buf) - keep])
                    self._held = buf[len(buf) - keep :]
                    return "".join(reasoning), "".join(content)
                content.append(buf[:at])
                buf = buf[at + len(marker) :]
        return "".join(reasoning), "".join(content)


def thinking_flag(chat_template_kwargs: Mapping[str, Any] | None) -> bool | None:
    """The request's thinking toggle: ``enable_thinking`` (Qwen3, GLM), ``thinking`` (DeepSeek)."""
    if not chat_template_kwargs:
        return None
    for key in ("enable_thinking", "thinking"):
        value = chat_template_kwargs.get(key)
        if isinstance(value, bool):
            return value
    return None
