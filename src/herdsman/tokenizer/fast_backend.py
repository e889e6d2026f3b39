"""An optional faster encoder (PyPI ``fastokens``), used only where it matches ``tokenizers``.

fastokens re-implements the Hugging Face encode pipeline in Rust with a faster pre-tokenizer
(about 6x on a 2.3k-token Qwen3 prompt here). Ids must be identical, so at load time every
tokenizer is checked against ``tokenizers`` on probe texts that exercise what differs between
implementations (special tokens, unicode, whitespace runs, digits, byte fallback); any mismatch
and the gateway keeps the reference encoder for that model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

log = logging.getLogger(__name__)

Encoder = Callable[[str, bool], list[int]]

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


def verified_encoder(fast: Any, reference: Tokenizer, path: Path) -> Encoder | None:
    """An encoder on ``fast`` when it agrees with ``reference`` on every probe, else None.

    It encodes: run it in the process that will encode (with more than one BPE thread, the
    first encode starts worker threads, which a forked process would not inherit), and in the
    thread that will encode most (fastokens keeps matching state per thread that encodes)."""
    for text in _probe_texts(reference):
        for special in (False, True):
            expected = reference.encode(text, add_special_tokens=special).ids
            got = fast.encode(text, add_special_tokens=special).ids
            if got != expected:
                log.warning(
                    "fastokens differs from tokenizers on %s (add_special_tokens=%s); "
                    "using tokenizers",
                    path,
                    special,
                )
                return None

    def encode(text: str, add_special_tokens: bool) -> list[int]:
        return fast.encode(text, add_special_tokens=add_special_tokens).ids

    log.info("fastokens matches tokenizers on %s; encoding with fastokens", path)
    return encode


def load_fast_encoder(
    path: Path, reference: Tokenizer, json_text: str | None = None
) -> Encoder | None:
    """A fastokens encoder for ``path`` when it agrees with ``reference`` on every probe."""
    fast = open_fast_tokenizer(path, json_text)
    return verified_encoder(fast, reference, path) if fast is not None else None
