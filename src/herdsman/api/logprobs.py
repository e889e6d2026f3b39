"""Logprobs in the two OpenAI shapes: chat (`content` entries) and completions (lists)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from herdsman.engines import PromptLogprobs, TokenLogprobs
from herdsman.tokenizer import ModelTokenizer


def _chat_entry(tokenizer: ModelTokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(
    tokenizer: ModelTokenizer, runs: Iterable[TokenLogprobs], top_n: int
) -> list[dict[str, Any]]:
    content = []
    for run in runs:
        for i, (token_id, logprob) in enumerate(zip(run.token_ids, run.logprobs, strict=False)):
            entry = _chat_entry(tokenizer, token_id, logprob)
            alternatives = run.top[i][:top_n] if i < len(run.top) else []
            entry["top_logprobs"] = [_chat_entry(tokenizer, t, lp) for t, lp in alternatives]
            content.append(entry)
    return content


class CompletionLogprobs:
    """Completions-style logprobs; keeps the running text offset of one choice across chunks."""

    __slots__ = ("_offset", "_tokenizer", "_top_n")

    def __init__(self, tokenizer: ModelTokenizer, top_n: int) -> None:
        self._tokenizer = tokenizer
        self._top_n = top_n
        self._offset = 0

    def format(self, runs: Iterable[TokenLogprobs | PromptLogprobs]) -> dict[str, Any]:
        """Runs in order (an echoed prompt's, then the output's); a token without a logprob (the
        prompt's first: nothing precedes it) is null in `token_logprobs` and `top_logprobs`."""
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offsets: list[int] = []
        text_of = self._tokenizer.token_text
        for run in runs:
            for i, (token_id, logprob) in enumerate(zip(run.token_ids, run.logprobs, strict=False)):
                text = text_of(token_id)
                tokens.append(text)
                token_logprobs.append(logprob)
                offsets.append(self._offset)
                self._offset += len(text)
                if logprob is None:
                    top.append(None)
                    continue
                alternatives = run.top[i][: self._top_n] if i < len(run.top) else []
                top.append({text_of(t): lp for t, lp in alternatives})
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }
