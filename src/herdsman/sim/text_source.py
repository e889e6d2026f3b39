"""Token ids of the built-in corpus, and where a request starts reading them."""

from __future__ import annotations

from tokenizers import Tokenizer

from herdsman.sim.corpus import CORPUS

_SENTENCE_END = ".!?\n"


class TextSource:
    """The corpus encoded once; generation walks `ids` cyclically from a sentence start."""

    __slots__ = ("ids", "sentence_starts")

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

    def start_for(self, key: int) -> int:
        return self.sentence_starts[key % len(self.sentence_starts)]
