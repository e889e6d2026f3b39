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
segments are reused by its next turn, soon, or not at all. Behind this process's L1 sits, when the
gateway runs several processes, the store they all share (shared_store): a turn that lands on
another process than the previous one still finds the conversation's segments.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from herdsman.tokenizer.shared_store import SharedSegmentStore

log = logging.getLogger(__name__)

Encode = Callable[[str, bool], list[int]]
# Encodes many texts off the event loop (in a thread, without the GIL held).
EncodeMany = Callable[[list[str], bool], Awaitable[list[list[int]]]]

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
    """Added tokens cut out before pre-tokenization; None when one of them is not atomic.

    A `normalized` token is matched in the normalized text, so it only cuts where the raw text
    shows it when normalizing changes nothing (DeepSeek's chat tokens: normalized, empty
    normalizer Sequence).
    """
    normalizer = tokenizer_json.get("normalizer")
    identity = normalizer is None or (
        normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")
    )
    tokens: dict[str, int] = {}
    for token in tokenizer_json.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            return None
        if token.get("normalized", not token.get("special", False)) and not identity:
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


class SegmentTier(Protocol):
    """Where L1 keeps segment ids: a lookup for many pieces at once, and a store for many."""

    def get_many(self, pieces: Sequence[str]) -> list[array | None]: ...

    def put_many(self, items: Sequence[tuple[str, array]]) -> None: ...


class SegmentedText:
    """A text cut at added tokens: the ids known so far and the plain pieces still to encode.

    A piece that occurs several times in one text (a newline between turns) is looked up and
    encoded once.
    """

    __slots__ = ("_at", "_parts", "missing", "pieces")

    def __init__(self, splitting: Splitting, text: str, tier: SegmentTier | None) -> None:
        self.pieces = split_segments(splitting, text)
        token_ids = splitting.token_ids
        self._parts: list[int | array | None] = [token_ids.get(piece) for piece in self.pieces]
        # Each distinct plain piece, with where it occurs.
        self._at: dict[str, list[int]] = {}
        for i, part in enumerate(self._parts):
            if part is None:
                self._at.setdefault(self.pieces[i], []).append(i)
        distinct = list(self._at)
        found = tier.get_many(distinct) if tier is not None and distinct else [None] * len(distinct)
        #: the distinct pieces no cache knows, in order of first occurrence
        self.missing: list[str] = []
        for piece, ids in zip(distinct, found, strict=True):
            if ids is None:
                self.missing.append(piece)
            else:
                self._fill(piece, ids)

    def _fill(self, piece: str, ids: array) -> None:
        for i in self._at[piece]:
            self._parts[i] = ids

    def finish(
        self,
        splitting: Splitting,
        encoded: Sequence[Sequence[int]],
        add_special_tokens: bool,
        tier: SegmentTier | None,
    ) -> list[int]:
        """Splice the encoded missing pieces in, store them, and return the whole text's ids."""
        new: list[tuple[str, array]] = []
        for piece, piece_ids in zip(self.missing, encoded, strict=True):
            packed = array("I", piece_ids)
            self._fill(piece, packed)
            new.append((piece, packed))
        if tier is not None:
            tier.put_many(new)
        ids: list[int] = list(splitting.special_prefix) if add_special_tokens else []
        for part in self._parts:
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(part)  # type: ignore[arg-type]
        return ids


def encode_segments(
    splitting: Splitting,
    text: str,
    add_special_tokens: bool,
    encode: Encode,
    tier: SegmentTier | None = None,
) -> list[int]:
    segmented = SegmentedText(splitting, text, tier)
    encoded = [encode(piece, False) for piece in segmented.missing]
    return segmented.finish(splitting, encoded, add_special_tokens, tier)


class L1Segments:
    """This process's LRU in front of the store every process shares (when there is one)."""

    def __init__(self, local: _LruBytes, shared: SharedSegmentStore | None = None) -> None:
        self.local = local
        self.shared = shared

    def get_many(self, pieces: Sequence[str]) -> list[array | None]:
        local = self.local
        found = [local.get(piece) for piece in pieces]
        if self.shared is not None:
            missing = [i for i, ids in enumerate(found) if ids is None]
            if missing:
                from_shared = self.shared.get_many([pieces[i] for i in missing])
                for i, ids in zip(missing, from_shared, strict=True):
                    if ids is not None:
                        found[i] = ids
                        local.put(pieces[i], len(pieces[i]), ids)
        return found

    def put_many(self, items: Sequence[tuple[str, array]]) -> None:
        for piece, ids in items:
            self.local.put(piece, len(piece), ids)
        if self.shared is not None:
            self.shared.put_many(items)  # also moves the older generation's hits forward


class TokenizationCache:
    """L0 + L1 in front of an encoder; every result equals the encoder's own."""

    def __init__(
        self,
        encode: Encode,
        splitting: Splitting | None,
        l0_bytes: int,
        l1_bytes: int,
        shared: SharedSegmentStore | None = None,
    ) -> None:
        self._encode = encode
        self._splitting = splitting if l1_bytes > 0 else None
        self.l0 = _LruBytes(l0_bytes) if l0_bytes > 0 else None
        self.l1 = _LruBytes(l1_bytes) if self._splitting is not None else None
        self.shared = shared if self.l1 is not None else None
        self._segments = L1Segments(self.l1, self.shared) if self.l1 is not None else None

    @property
    def l1_enabled(self) -> bool:
        return self.l1 is not None

    def _segmenting(self, add_special_tokens: bool) -> Splitting | None:
        splitting = self._splitting
        if splitting is None or not (splitting.with_special_tokens or not add_special_tokens):
            return None
        return splitting

    def _l0_get(self, text: str, add_special_tokens: bool) -> list[int] | None:
        hit = self.l0.get((text, add_special_tokens)) if self.l0 is not None else None
        return hit.tolist() if hit is not None else None

    def _l0_put(self, text: str, add_special_tokens: bool, ids: list[int]) -> list[int]:
        if self.l0 is not None:
            self.l0.put((text, add_special_tokens), len(text), array("I", ids))
        return ids

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        hit = self._l0_get(text, add_special_tokens)
        if hit is not None:
            return hit
        splitting = self._segmenting(add_special_tokens)
        if splitting is not None:
            ids = encode_segments(splitting, text, add_special_tokens, self._encode, self._segments)
        else:
            ids = self._encode(text, add_special_tokens)
        return self._l0_put(text, add_special_tokens, ids)

    async def encode_long(
        self, text: str, add_special_tokens: bool, encode_many: EncodeMany
    ) -> list[int]:
        """`encode` for a text too long to encode on the event loop: what no cache level knows
        is encoded by `encode_many` (off the loop, in one call); the rest stays cheap and local."""
        hit = self._l0_get(text, add_special_tokens)
        if hit is not None:
            return hit
        splitting = self._segmenting(add_special_tokens)
        if splitting is not None:
            segmented = SegmentedText(splitting, text, self._segments)
            texts = segmented.missing
            encoded = await encode_many(texts, False) if texts else []
            ids = segmented.finish(splitting, encoded, add_special_tokens, self._segments)
        else:
            ids = (await encode_many([text], add_special_tokens))[0]
        return self._l0_put(text, add_special_tokens, ids)
