"""Token ids of the built-in corpus, and where a request starts reading them."""

from __future__ import annotations

import re

from tokenizers import Tokenizer

from herdsman.sim.corpus import CORPUS

_SENTENCE_END = ".!?\n"
# How a Qwen/Hermes-style chat template closes a tool result, and what may follow it when it is
# the prompt's last message: the end of the turn and the assistant's generation prompt (with an
# empty think block when thinking is switched off).
_TOOL_RESULT_END = "</tool_response>"
_GENERATION_PROMPT = re.compile(
    r"\s*(?:<\|im_end\|>)?\s*(?:<\|im_start\|>)?\s*(?:assistant)?\s*(?:<think>\s*</think>)?\s*"
)
# The decoded prompt tail searched for it: a generation prompt is a handful of tokens.
_TAIL_TOKENS = 32


class TextSource:
    """The corpus encoded once; generation walks `ids` cyclically from a sentence start."""

    __slots__ = ("after_tool", "ids", "sentence_starts")

    def __init__(self, tokenizer: Tokenizer, text: str = CORPUS) -> None:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        self.ids: list[int] = list(encoding.ids)
        if not self.ids:
            raise ValueError("corpus encodes to no tokens")
        # Starting right after a sentence end makes every stream read like a fresh sentence
        # rather than beginning mid-word.
        starts = [0]
        for i in range(1, len(encoding.offsets)):
            end = encoding.offsets[i - 1][1]
            if end > 0 and text[end - 1] in _SENTENCE_END:
                starts.append(i)
        self.sentence_starts: list[int] = starts
        # --response-text-after-tool: the answer of prompts ending in a tool result.
        self.after_tool: AfterToolAnswer | None = None

    def start_for(self, key: int) -> int:
        return self.sentence_starts[key % len(self.sentence_starts)]

    def add_after_tool(self, tokenizer: Tokenizer, text: str) -> None:
        """Append `text`'s ids to `ids`, as the answer of prompts that end in a tool result
        (requests start there, and end with EOS after it, see `SimEngine.submit`)."""
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise ValueError("the after-tool answer encodes to no tokens")
        self.after_tool = AfterToolAnswer(tokenizer, len(self.ids), len(ids))
        self.ids = self.ids + list(ids)


class AfterToolAnswer:
    """Where the after-tool answer sits in `TextSource.ids`, and which prompts get it."""

    __slots__ = ("_tokenizer", "length", "start")

    def __init__(self, tokenizer: Tokenizer, start: int, length: int) -> None:
        self._tokenizer = tokenizer
        self.start = start
        self.length = length

    def applies(self, prompt_ids: list[int]) -> bool:
        """Whether the prompt's last message is a tool result."""
        tail = self._tokenizer.decode(prompt_ids[-_TAIL_TOKENS:], skip_special_tokens=False)
        end = tail.rfind(_TOOL_RESULT_END)
        if end < 0:
            return False
        return _GENERATION_PROMPT.fullmatch(tail[end + len(_TOOL_RESULT_END) :]) is not None
