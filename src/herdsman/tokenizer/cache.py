"""Two-level tokenization cache: L0 exact text, L1 text segments between atomic added tokens.

Multi-turn chats re-send the whole conversation every turn. A chat-templated prompt is a chain of
plain-text segments separated by added tokens (``<|im_start|>``, ``<|eot_id|>``, ...). The
tokenizer cuts those tokens out before normalization and pre-tokenization, so each segment is
encoded on its own: ``encode(prompt) == concat(encode(segment) or id(token))``. L1 caches segment
ids by content, so a new turn encodes only its new segments; because the key is the content, not
the position, a repeated system prompt or tool list hits whatever precedes it.

That identity needs atomic added tokens (no lstrip/rstrip/single_word, not normalized) and a
pre-tokenizer that treats every segment alike (Metaspace ``prepend_scheme: first`` does not). Load
time checks the configuration and probes real texts; if either fails, L1 is off for that model.

Both levels are LRU with a byte budget: recency is the right signal here, because a conversation's
segments are reused by its next turn, soon, or not at all.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Encode = Callable[[str, bool], list[int]]

_ENTRY_OVERHEAD = 120  # dict slot, OrderedDict links, the key and array objects' headers


class _LruBytes:
    """An LRU map whose size is the bytes its keys and values take, not its entry count."""

    __slots__ = ("_budget", "_items", "evictions", "hits", "misses", "size")

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: OrderedDict[object, tuple[array, int]] = OrderedDict()
        self.size = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: object) -> array | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: object, text_len: int, ids: array) -> None:
        cost = text_len + 4 * len(ids) + _ENTRY_OVERHEAD
        if cost > self._budget or key in self._items:
            return
        self._items[key] = (ids, cost)
        self.size += cost
        while self.size > self._budget:
            _, (_, freed) = self._items.popitem(last=False)
            self.size -= freed
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class Splitting:
    """How to cut a text at atomic added tokens, if this tokenizer allows it."""

    pattern: re.Pattern[str]
    token_ids: dict[str, int]
    special_prefix: tuple[int, ...]  # what add_special_tokens=True puts in front (e.g. BOS)
    # False when the post-processor does more than prepend (e.g. appends [SEP]): then only
    # add_special_tokens=False encodes go through L1.
    with_special_tokens: bool = True


def _atomic_added_tokens(tokenizer_json: dict) -> dict[str, int] | None:
    """Added tokens cut out before pre-tokenization; None when one of them is not atomic."""
    tokens: dict[str, int] = {}
    for token in tokenizer_json.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            return None
        if token.get("normalized", not token.get("special", False)):
            return None
        tokens[token["content"]] = token["id"]
    return tokens


def _uses_first_only_prefix(tokenizer_json: dict) -> bool:
    """Metaspace with prepend_scheme "first" marks only the text's first segment."""
    text = json.dumps(tokenizer_json.get("pre_tokenizer")) + json.dumps(
        tokenizer_json.get("normalizer")
    )
    return '"prepend_scheme": "first"' in text


PROBES = (
    "{0}system\nYou are helpful.{1}\n{0}user\n  Hello there!\n\n{1}\n{0}assistant\n",
    "{0}{1}{0} leading space{1}trailing {0}\tx\r\n{1}🙂 naïve 日本語{0}",
    "no tokens at all, just text with  double  spaces and\n\nnewlines",
    "{1}{1}{1} 123 456{0}'s it's{1}",
)


def plan_splitting(tokenizer_file: Path, encode: Encode) -> Splitting | None:
    """A Splitting for this tokenizer when segment-wise encoding provably equals whole encoding."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    tokens = _atomic_added_tokens(data)
    if not tokens:
        log.warning("L1 tokenizer cache off for %s: added tokens are not atomic", tokenizer_file)
        return None
    if _uses_first_only_prefix(data):
        log.warning("L1 tokenizer cache off for %s: prepend_scheme 'first'", tokenizer_file)
        return None
    by_length = sorted(tokens, key=len, reverse=True)  # longest first, as the tokenizer matches
    pattern = re.compile("|".join(re.escape(t) for t in by_length))
    prefix = tuple(encode("", True))
    splitting = Splitting(pattern, tokens, prefix)
    specials = by_length[:2] if len(by_length) > 1 else by_length * 2
    texts = [template.format(*specials) for template in PROBES]
    if any(encode_segments(splitting, t, False, encode) != encode(t, False) for t in texts):
        log.warning("L1 tokenizer cache off for %s: segment-wise encoding differs", tokenizer_file)
        return None
    if any(encode_segments(splitting, t, True, encode) != encode(t, True) for t in texts):
        splitting = Splitting(pattern, tokens, prefix, with_special_tokens=False)
    return splitting


def split_segments(splitting: Splitting, text: str) -> list[str]:
    """Alternating plain text and added tokens (empty plain pieces dropped)."""
    pieces: list[str] = []
    at = 0
    for match in splitting.pattern.finditer(text):
        if match.start() > at:
            pieces.append(text[at : match.start()])
        pieces.append(match.group())
        at = match.end()
    if at < len(text):
        pieces.append(text[at:])
    return pieces


def encode_segments(
    splitting: Splitting,
    text: str,
    add_special_tokens: bool,
    encode: Encode,
    lookup: Callable[[str], array | None] | None = None,
    store: Callable[[str, array], None] | None = None,
) -> list[int]:
    ids: list[int] = list(splitting.special_prefix) if add_special_tokens else []
    token_ids = splitting.token_ids
    for piece in split_segments(splitting, text):
        token = token_ids.get(piece)
        if token is not None:
            ids.append(token)
            continue
        cached = lookup(piece) if lookup is not None else None
        if cached is None:
            cached = array("I", encode(piece, False))
            if store is not None:
                store(piece, cached)
        ids.extend(cached)
    return ids


class TokenizationCache:
    """L0 + L1 in front of an encoder; every result equals the encoder's own."""

    def __init__(
        self, encode: Encode, splitting: Splitting | None, l0_bytes: int, l1_bytes: int
    ) -> None:
        self._encode = encode
        self._splitting = splitting if l1_bytes > 0 else None
        self.l0 = _LruBytes(l0_bytes) if l0_bytes > 0 else None
        self.l1 = _LruBytes(l1_bytes) if self._splitting is not None else None

    @property
    def l1_enabled(self) -> bool:
        return self.l1 is not None

    def _store_segment(self, piece: str, ids: array) -> None:
        assert self.l1 is not None
        self.l1.put(piece, len(piece), ids)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        key = (text, add_special_tokens)
        if self.l0 is not None:
            hit = self.l0.get(key)
            if hit is not None:
                return hit.tolist()
        splitting = self._splitting
        if (
            splitting is not None
            and self.l1 is not None
            and (splitting.with_special_tokens or not add_special_tokens)
        ):
            ids = encode_segments(
                splitting,
                text,
                add_special_tokens,
                self._encode,
                self.l1.get,
                self._store_segment,
            )
        else:
            ids = self._encode(text, add_special_tokens)
        if self.l0 is not None:
            self.l0.put(key, len(text), array("I", ids))
        return ids
