"""An optional faster encoder (PyPI ``fastokens``), used only where it matches ``tokenizers``.

fastokens re-implements the Hugging Face encode pipeline in Rust with a faster pre-tokenizer
(about 6x on a 2.3k-token Qwen3 prompt here). Ids must be identical, so at load time every
tokenizer is checked against ``tokenizers`` on probe texts that exercise what differs between
implementations (special tokens, unicode, whitespace runs, digits, byte fallback); any mismatch
and the gateway keeps the reference encoder for that model.
"""

from __future__ import annotations

import logging
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


def open_fast_tokenizer(path: Path, json_text: str | None = None) -> Any | None:
    """fastokens' tokenizer for ``path``, not yet checked (None: fastokens cannot load it).

    `json_text`, when given, is the tokenizer as loaded (changed after reading ``path``).
    Loading runs no encode, so fastokens has started no thread yet: a process may fork after it.
    """
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


def verified_encoder(fast: Any, reference: Tokenizer, path: Path) -> Encoder | None:
    """An encoder on ``fast`` when it agrees with ``reference`` on every probe, else None.

    The first encode starts fastokens' worker thread: run this in the process that will encode
    (a forked process would inherit the pool's state without its thread)."""
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
