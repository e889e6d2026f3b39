"""Return the C heap's free pages to the system.

Loading a tokenizer parses a multi-megabyte JSON file: tokenizers and fastokens free most of what
they allocate while loading, but glibc keeps the freed pages in the process (Qwen3: 81 MB resident
after tokenizers loads, 43 MB after a trim; fastokens 127 MB -> 70 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        return None


def trim_heap() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
