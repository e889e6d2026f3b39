"""Logprobs in the two OpenAI shapes: chat (`content` entries) and completions (lists).

Token strings are vLLM's: each token decoded on its own, and a piece of a multi-byte character
shown as the text it completes given the tokens sampled before it (``token_text_in_context``),
so one choice carries its last sampled ids from one streamed chunk to the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from herdsman.engines import PromptLogprobs, TokenLogprobs
from herdsman.tokenizer import ModelTokenizer

# vLLM's correction reads at most this many preceding sampled tokens.
_CONTEXT = 4
# What vLLM reports for a logprob of -inf (JSON has no infinity).
_FLOOR = -9999.0


class _Context:
    """The last sampled ids of one run of positions (a choice's output, or its prompt)."""

    __slots__ = ("ids", "tokenizer")

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []

    def text(self, token_id: int) -> str:
        return self.tokenizer.token_text_in_context(token_id, self.ids)

    def advance(self, token_id: int) -> None:
        ids = self.ids
        ids.append(token_id)
        if len(ids) > _CONTEXT:
            del ids[0]


def _clamp(logprob: float) -> float:
    return logprob if logprob > _FLOOR else _FLOOR


def _chat_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _clamp(logprob), "bytes": list(text.encode())}


class ChatLogprobs:
    """Chat-style logprobs of one choice, chunk after chunk."""

    __slots__ = ("_context", "_top_n")

    def __init__(self, tokenizer: ModelTokenizer, top_n: int) -> None:
        self._context = _Context(tokenizer)
        self._top_n = top_n

    def content(self, runs: Iterable[TokenLogprobs]) -> list[dict[str, Any]]:
        context, top_n = self._context, self._top_n
        content = []
        for run in runs:
            for i, (token_id, logprob) in enumerate(zip(run.token_ids, run.logprobs, strict=False)):
                entry = _chat_entry(context.text(token_id), logprob)
                alternatives = run.top[i][:top_n] if i < len(run.top) else []
                entry["top_logprobs"] = [_chat_entry(context.text(t), lp) for t, lp in alternatives]
                content.append(entry)
                context.advance(token_id)
        return content


def chat_logprobs(
    tokenizer: ModelTokenizer, runs: Iterable[TokenLogprobs], top_n: int
) -> list[dict[str, Any]]:
    """All of one choice's logprobs at once (a non-streamed response)."""
    return ChatLogprobs(tokenizer, top_n).content(runs)


def _sampled_and_best(
    sampled: int, logprob: float, entries: list[tuple[int, float]], top_n: int
) -> list[tuple[int, float]]:
    """A completions position's `top_logprobs` as vLLM builds them: the sampled token first,
    then the ``top_n`` best tokens in rank order (one fewer when the sampled token is one of
    them), from an engine list that holds at least ``top_n`` tokens besides the sampled one."""
    ranked = sorted((e for e in entries if e[0] != sampled), key=lambda e: -e[1])
    better = sum(1 for _, lp in ranked if lp > logprob)
    return [(sampled, logprob), *ranked[: top_n - 1 if better < top_n else top_n]]


class CompletionLogprobs:
    """Completions-style logprobs; keeps the running text offset of one choice across chunks."""

    __slots__ = ("_offset", "_output", "_prompt", "_tokenizer", "_top_n")

    def __init__(self, tokenizer: ModelTokenizer, top_n: int) -> None:
        self._tokenizer = tokenizer
        self._top_n = top_n
        self._offset = 0
        # The prompt's positions and the output's are corrected each with their own context.
        self._prompt = _Context(tokenizer)
        self._output = _Context(tokenizer)

    def format(self, runs: Iterable[TokenLogprobs | PromptLogprobs]) -> dict[str, Any]:
        """Runs in order (an echoed prompt's, then the output's); a token without a logprob (the
        prompt's first: nothing precedes it) is null in `token_logprobs` and `top_logprobs`."""
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for run in runs:
            context = self._prompt if isinstance(run, PromptLogprobs) else self._output
            for i, (token_id, logprob) in enumerate(zip(run.token_ids, run.logprobs, strict=False)):
                if logprob is None:
                    # vLLM decodes a position without logprobs plainly, and it is no context.
                    text = self._tokenizer.decode([token_id], skip_special_tokens=False)
                    top.append(None)
                    token_logprobs.append(None)
                else:
                    text = context.text(token_id)
                    entries = run.top[i] if i < len(run.top) else []
                    alternatives = _sampled_and_best(token_id, logprob, entries, self._top_n)
                    top.append({context.text(t): _clamp(lp) for t, lp in alternatives})
                    token_logprobs.append(_clamp(logprob))
                    context.advance(token_id)
                tokens.append(text)
                offsets.append(self._offset)
                self._offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }
