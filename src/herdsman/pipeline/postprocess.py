"""Per-choice output processing: token ids to text deltas, with stop strings applied."""

from __future__ import annotations

from collections.abc import Sequence

from herdsman.engines import PromptLogprobs, TokenLogprobs
from herdsman.tokenizer import ModelTokenizer, StopChecker


class ChoiceOutput:
    """The state of one choice (one of ``n``) while its tokens stream in."""

    __slots__ = (
        "_context",
        "_detok",
        "_hidden",
        "_keep_ids",
        "_keep_stop",
        "_keep_text",
        "_min_tokens",
        "_skip_special",
        "_stop",
        "_stops",
        "_tokenizer",
        "finish_reason",
        "index",
        "logprobs",
        "matched_stop",
        "prompt_logprobs",
        "text",
        "token_count",
        "token_ids",
    )

    def __init__(
        self,
        index: int,
        tokenizer: ModelTokenizer,
        stops: Sequence[str],
        *,
        skip_special_tokens: bool,
        keep_text: bool,
        keep_stop: bool = False,
        keep_ids: bool = False,
        hidden_ids: frozenset[int] = frozenset(),
        min_tokens: int = 0,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        # The output is decoded as the prompt's continuation (vLLM primes its detokenizer so).
        self._context = prompt_ids
        self._hidden = hidden_ids
        # Stop strings cannot end within the first min_tokens tokens' text (vLLM's rule).
        self._min_tokens = min_tokens
        self.index = index
        self._tokenizer = tokenizer
        self._stops = stops
        self._skip_special = skip_special_tokens
        self._keep_stop = keep_stop
        self._keep_text = keep_text
        self._keep_ids = keep_ids
        self.restart()

    def restart(self) -> None:
        """Back to no output at all: the generation is being retried from the start."""
        self.prompt_logprobs: PromptLogprobs | None = None
        self._detok = self._tokenizer.detokenizer(
            skip_special_tokens=self._skip_special, context=self._context
        )
        self._stop = StopChecker(self._stops, keep_stop=self._keep_stop) if self._stops else None
        self.token_count = 0
        self.finish_reason: str | None = None
        self.matched_stop: str | int | None = None
        # Non-streamed responses accumulate here; streamed ones hand each delta straight on.
        self.text: list[str] | None = [] if self._keep_text else None
        self.logprobs: list[TokenLogprobs] | None = [] if self._keep_text else None
        # The ids output (every one counted, EOS too: vLLM's ``token_ids``), when asked for.
        self.token_ids: list[int] | None = [] if self._keep_ids else None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_ids: Sequence[int]) -> str:
        """New ids in, the text now safe to show out. Sets ``finish_reason`` on a stop string.

        Hidden ids (the EOS or stop id that ends a choice) count but show no text. With stop
        strings, ids go through one at a time, so that a stop completed by the k-th id of a
        batch counts k ids: the tokens after it are not output (vLLM's accounting), even when
        the engine sent them in the same message or ran ahead before its abort landed.
        """
        stop = self._stop
        if stop is None:
            self.token_count += len(token_ids)
            if self.token_ids is not None:
                self.token_ids.extend(token_ids)
            if self._hidden:
                token_ids = [t for t in token_ids if t not in self._hidden]
            return self._keep(self._detok.push(token_ids))
        pieces: list[str] = []
        hidden, detok = self._hidden, self._detok
        kept = self.token_ids
        for token_id in token_ids:
            self.token_count += 1
            if kept is not None:
                kept.append(token_id)
            if token_id in hidden:
                continue
            text = detok.push((token_id,))
            if not text:
                continue
            if self.token_count <= self._min_tokens:
                pieces.append(stop.hold(text))
                continue
            pieces.append(stop.feed(text))
            if stop.matched is not None:
                self.finish_reason = "stop"
                self.matched_stop = stop.matched
                break
        return self._keep("".join(pieces))

    def finish(self, reason: str, matched_token_id: int | None = None) -> str:
        """The engine ended this choice: release what the stop check held.

        Ids the detokenizer still holds are the start of a character the output never completes:
        they are dropped, not shown as U+FFFD, as vLLM's detokenizer leaves them.
        """
        self._detok.discard()
        # What the stop check held back never became a stop string: it is output after all.
        text = self._stop.flush() if self._stop is not None else ""
        self.finish_reason = reason
        if matched_token_id is not None:
            self.matched_stop = matched_token_id
        return self._keep(text)

    def keep_logprobs(self, logprobs: TokenLogprobs) -> None:
        if self.logprobs is not None:
            self.logprobs.append(logprobs)

    def _keep(self, text: str) -> str:
        if self.text is not None and text:
            self.text.append(text)
        return text
