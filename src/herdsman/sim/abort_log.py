"""A record of requests that ended early, so tests can prove a gateway freed them.

Each entry is `<kind> <request_id>`: `abort` for an explicit Abort RPC (logged for every id it
names, in flight or not, since the point is to show the gateway sent it) and `cancel` for a
Generate call that ended from the client's side before the engine had finished it: an explicit
cancel, a deadline that expired, a dropped connection, or the sim shutting down mid-stream.
A request aborted by RPC is not logged again when its stream is cancelled afterwards.
"""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path
from typing import Literal, TextIO

AbortKind = Literal["abort", "cancel"]
RECENT_LIMIT = 100


class AbortLog:
    def __init__(self, path: Path | None) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT_LIMIT)
        # Line-buffered so a test reading the file sees each entry as soon as it happens.
        self._file: TextIO | None = (
            path.open("a", encoding="utf-8", buffering=1) if path is not None else None
        )

    def record(self, kind: AbortKind, request_id: str) -> None:
        self.counts[kind] += 1
        self.recent.append((kind, request_id))
        if self._file is not None:
            self._file.write(f"{kind} {request_id}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
