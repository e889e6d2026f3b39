"""An optional faster encoder (PyPI ``fastokens``), used only where it matches ``tokenizers``.

fastokens re-implements the Hugging Face encode pipeline in Rust with a faster pre-tokenizer
(about 6x on a 2.3k-token Qwen3 prompt here). Ids must be identical, so at load time every
tokenizer is checked against ``tokenizers`` on probe texts that exercise what differs between
implementations (special tokens, unicode, whitespace runs, digits, byte fallback); any mismatch
and the gateway keeps the reference encoder for that model.

A process that held both would hold the vocabulary twice (Qwen3: ~45 MB for ``tokenizers``
beside fastokens' ~110 MB), so where fastokens also decodes every id as ``tokenizers`` does
(`decodes_alike`), it decodes too and the reference is let go (ModelTokenizer.decode_with). The
encode check then runs against the ids the reference gave for the probes, kept (`EncodeProbes`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

log = logging.getLogger(__name__)

Encoder = Callable[[str, bool], list[int]]

# (text, add_special_tokens, the reference's ids) for each probe.
EncodeProbes = tuple[tuple[str, bool, tuple[int, ...]], ...]

PROBES = (
    "Hello, world! How are you today?",
    "  leading spaces, trailing spaces   \n\n\ttabs\r\nCRLF  ",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F 2026-11-27",
    "naïve café — Grüße 日本語のテキスト 한국어 العربية עברית 🙂🚀👩‍👩‍👧",
    "code: def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "I'm you're they'll it's we've HE'S 'quoted'",
    "\u200b zero\u00a0width \ufeff bom \U0001f9ea test \x00 nul",
    "a" * 300 + " " + "ab" * 200,
)


def _probe_texts(tokenizer: Tokenizer) -> list[str]:
    specials = [t.content for t in tokenizer.get_added_tokens_decoder().values()][:64]
    glued = "".join(f"{s}text {i}\n" for i, s in enumerate(specials))
    return [*PROBES, glued, f"{glued}{PROBES[3]}{glued}"]


# fastokens splits a long text's BPE over worker threads (by default as many as cores), read
# from this variable at a process's first encode. The gateway runs one process per core, so a
# second BPE thread only takes time from another process's core; one thread also means an encode
# starts no thread, so the fork server can run fastokens' one-time initialisation (see `warm`)
# and a process may still fork after it. An operator's own setting is kept.
THREADS_ENV = "FASTOKENS_BPE_THREADS"

# Text for `warm`: every kind of piece the pre-tokenizer tells apart (letters, digits, spaces,
# punctuation, CJK, emoji), so that the tables built on first use are built in the fork server.
_WARM_TEXT = "Hello, world! 1234 naïve café  日本語 🙂\n\tdef f(x): return {'a': [1, 2]}  "


def open_fast_tokenizer(path: Path, json_text: str | None = None) -> Any | None:
    """fastokens' tokenizer for ``path``, not yet checked (None: fastokens cannot load it).

    `json_text`, when given, is the tokenizer as loaded (changed after reading ``path``).
    Loading runs no encode, so fastokens has started no thread yet: a process may fork after it.
    """
    os.environ.setdefault(THREADS_ENV, "1")
    try:
        import fastokens
    except ImportError:
        return None
    try:
        if json_text is not None:
            return fastokens.Tokenizer.from_json_str(json_text)
        return fastokens.Tokenizer.from_file(str(path))
    except Exception as exc:  # an unsupported model type or option: keep the reference
        log.info("fastokens cannot load %s (%s); using tokenizers", path, exc)
        return None


def warm(fast: Any) -> bool:
    """Run fastokens' one-time initialisation, where that starts no thread (one BPE thread).

    Its first encode builds ~40 MB of matching tables and takes ~100 ms (Qwen3). Done in the fork
    server, those pages are shared by every gateway process instead of built in each; each thread
    that encodes then adds only its own matching state (~16 MB, a few ms). False: not warmed, as
    the encode would start worker threads, which do not survive a fork."""
    if os.environ.get(THREADS_ENV) != "1":
        return False
    try:
        fast.encode(_WARM_TEXT, add_special_tokens=False)
    except Exception:  # the gateway process's check reports what is wrong with it
        return False
    return True


def encode_probes(reference: Tokenizer) -> EncodeProbes:
    """The probes with the ids ``reference`` gives them: what `verified_encoder` checks."""
    return tuple(
        (text, special, tuple(reference.encode(text, add_special_tokens=special).ids))
        for text in _probe_texts(reference)
        for special in (False, True)
    )


def verified_encoder(fast: Any, probes: EncodeProbes, path: Path) -> Encoder | None:
    """An encoder on ``fast`` when it gives the reference's ids on every probe, else None.

    It encodes: run it in the process that will encode (with more than one BPE thread, the
    first encode starts worker threads, which a forked process would not inherit), and in the
    thread that will encode most (fastokens keeps matching state per thread that encodes)."""
    for text, special, expected in probes:
        if tuple(fast.encode(text, add_special_tokens=special).ids) != expected:
            log.warning(
                "fastokens differs from tokenizers on %s (add_special_tokens=%s); using tokenizers",
                path,
                special,
            )
            return None

    def encode(text: str, add_special_tokens: bool) -> list[int]:
        return fast.encode(text, add_special_tokens=add_special_tokens).ids

    log.info("fastokens matches tokenizers on %s; encoding with fastokens", path)
    return encode


# Random id sequences `decodes_alike` decodes (seeded: every process decides alike).
_DECODE_SAMPLES = 400


def decodes_alike(fast: Any, reference: Tokenizer, probes: EncodeProbes, path: Path) -> bool:
    """Whether ``fast`` decodes as ``reference`` does, so that it can replace it.

    Checked: the vocabulary, id by id, both ways (``id_to_token``, ``token_to_id``); every added
    token alone, with special tokens skipped and kept; the probes' ids, whole and cut after each
    of their first 63 ids (mid-character too); and seeded random id sequences, which mix byte
    pieces, added tokens and words as no text would. The decoder pipelines (ByteLevel,
    Metaspace, ByteFallback, Strip, Replace) act per piece and per sequence, which these cover;
    the streaming algorithm over the decode is the same code (detokenizer.WindowStream) and is
    property-tested against ``DecodeStream``."""
    try:
        size = reference.get_vocab_size(with_added_tokens=True)
        if fast.vocab_size != size:
            return _differs(path, "vocabulary size")
        tokens = list(map(reference.id_to_token, range(size)))
        if list(map(fast.id_to_token, range(size))) != tokens:
            return _differs(path, "id_to_token")
        named = [t for t in tokens if t is not None]
        if list(map(fast.token_to_id, named)) != list(map(reference.token_to_id, named)):
            return _differs(path, "token_to_id")
        rng = random.Random(size)
        added = sorted(reference.get_added_tokens_decoder())
        sequences = [[i] for i in added]
        for _text, special, ids in probes:
            if special:
                sequences += [list(ids[:cut]) for cut in range(1, min(len(ids), 64))]
                sequences.append(list(ids))
        sequences += [
            [rng.randrange(size) for _ in range(rng.randrange(1, 16))]
            for _ in range(_DECODE_SAMPLES)
        ]
        for ids in sequences:
            for skip in (True, False):
                if fast.decode(ids, skip_special_tokens=skip) != reference.decode(
                    ids, skip_special_tokens=skip
                ):
                    return _differs(path, f"decode of {ids[:8]}")
    except Exception as exc:  # a method fastokens lacks or rejects: keep the reference
        return _differs(path, repr(exc))
    return True


def _differs(path: Path, what: str) -> bool:
    log.warning("fastokens decodes %s unlike tokenizers (%s); decoding with tokenizers", path, what)
    return False
