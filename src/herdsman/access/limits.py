"""Per-key rate limits: requests per minute, tokens per minute, concurrent requests.

The per-minute limits use GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp per key and dimension): a key with a limit of L per minute earns one unit every
60/L seconds and may hold up to L, so a burst of L passes at once and then one unit every 60/L
seconds. The state is the "theoretical arrival time" (TAT): the moment the bucket would be
full again. A request of one unit fits when ``max(TAT, now) + 60/L - 60 <= now``; otherwise it
fits again exactly that many seconds later, which is the ``Retry-After`` sent (rounded up).

- Requests: each request is one unit, taken at admission.
- Tokens: a request is admitted while the key has at least one token left in its bucket;
  its tokens are charged when they are known (the prompt's when the generation is admitted,
  the completion's when it ends), so a long request can overdraw the bucket and the key's next
  requests wait until it has refilled.
- Concurrency: a count of requests in flight, taken at admission and released when the
  response is done (its last byte written, or the client gone). It frees no sooner, so its
  ``Retry-After`` is 1.

A request refused by any limit takes nothing from the others. The state lives in one of:

- ``BoardLimiter``: a small file every process of one gateway maps (in the supervisor's
  temporary directory, beside the admission board), updated under an ``flock``; concurrency is
  kept per process (one slot each, zeroed when a process starts in that slot), so a process that
  dies holds nothing once it is replaced. Without a shared directory: this process's memory.
- ``RedisLimiter`` (``herdsman.access.redis_limits``): shared by every replica given the same
  ``--state-url``, each decision one Lua script.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from herdsman.access.keys import ApiKey, KeyLimits

PERIOD = 60.0  # seconds: the limits are per minute


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until the request would be admitted
    limit: str = ""  # what refused it: requests | tokens | concurrency

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after - 1e-6)))


ALLOWED = Decision(True)


def gcra_wait(tat: float, now: float, per_minute: int, units: float = 1.0) -> float:
    """Seconds until ``units`` fit in a GCRA bucket (<= 0: now)."""
    return max(tat, now) + units * PERIOD / per_minute - PERIOD - now


def gcra_take(tat: float, now: float, per_minute: int, units: float) -> float:
    """The bucket's TAT once ``units`` are taken from it (no check: it may overdraw)."""
    return max(tat, now) + units * PERIOD / per_minute


def decide(
    limits: KeyLimits, now: float, req_tat: float, tok_tat: float, in_flight: int
) -> Decision:
    """The admission decision of one request for its key's state (nothing is changed)."""
    refusals: list[Decision] = []
    if limits.requests_per_minute:
        wait = gcra_wait(req_tat, now, limits.requests_per_minute)
        if wait > 0:
            refusals.append(Decision(False, wait, "requests"))
    if limits.tokens_per_minute:
        wait = gcra_wait(tok_tat, now, limits.tokens_per_minute)
        if wait > 0:
            refusals.append(Decision(False, wait, "tokens"))
    if limits.max_concurrent and in_flight >= limits.max_concurrent:
        refusals.append(Decision(False, 1.0, "concurrency"))
    if not refusals:
        return ALLOWED
    # Admitted again only once every limit admits it: the longest wait.
    return max(refusals, key=lambda d: d.retry_after)


class Lease(Protocol):
    """A request's admission: gives its concurrency back (once) and charges its tokens."""

    def release(self) -> None: ...

    def charge(self, tokens: int) -> None: ...


class Limiter(Protocol):
    async def admit(self, key: ApiKey) -> tuple[Decision, Lease | None]:
        """The decision, and the lease when admitted."""
        ...

    async def close(self) -> None: ...


# -- one gateway: a mapped file ------------------------------------------------------------------

_F64 = 8


class _BoardLease:
    __slots__ = ("_board", "_index", "_released")

    def __init__(self, board: BoardLimiter, index: int) -> None:
        self._board = board
        self._index = index
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._board.release(self._index)

    def charge(self, tokens: int) -> None:
        self._board.charge(self._index, tokens)


class BoardLimiter:
    """The limits of every key, shared by the processes of one gateway through a mapped file
    (or kept in memory when ``path`` is None: one process alone).

    Layout: per key, two float64 TATs (requests, tokens); then per key, one int64 count of
    requests in flight per process slot. Keys are numbered in their configured order, which
    every process shares.
    """

    def __init__(self, keys: list[ApiKey], path: Path | None, slots: int = 1, slot: int = 0):
        self._index = {key.name: i for i, key in enumerate(keys)}
        self._limits = [key.limits for key in keys]
        self._slots = max(1, slots)
        self._slot = slot
        count = len(keys)
        size = max(1, count * 2 * _F64 + count * self._slots * _F64)
        self._fd: int | None = None
        if path is None:
            self._buffer: mmap.mmap | bytearray = bytearray(size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            with self._locked():
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)
            self._buffer = mmap.mmap(self._fd, size)
        view = memoryview(self._buffer)
        self._tats = view[: count * 2 * _F64].cast("d")
        self._counts = view[count * 2 * _F64 : count * 2 * _F64 + count * self._slots * _F64].cast(
            "q"
        )
        with self._locked():  # a process that died in this slot held nothing that lasts
            for i in range(count):
                self._counts[i * self._slots + self._slot] = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _in_flight(self, index: int) -> int:
        base = index * self._slots
        return sum(self._counts[base : base + self._slots])

    async def admit(self, key: ApiKey) -> tuple[Decision, Lease | None]:
        index = self._index[key.name]
        limits = self._limits[index]
        with self._locked():
            now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
            req_tat, tok_tat = self._tats[2 * index], self._tats[2 * index + 1]
            decision = decide(limits, now, req_tat, tok_tat, self._in_flight(index))
            if not decision.allowed:
                return decision, None
            if limits.requests_per_minute:
                self._tats[2 * index] = gcra_take(req_tat, now, limits.requests_per_minute, 1)
            self._counts[index * self._slots + self._slot] += 1
        return decision, _BoardLease(self, index)

    def release(self, index: int) -> None:
        with self._locked():
            self._counts[index * self._slots + self._slot] -= 1

    def charge(self, index: int, tokens: int) -> None:
        per_minute = self._limits[index].tokens_per_minute
        if not per_minute or tokens <= 0:
            return
        with self._locked():
            now = time.monotonic()
            tat = self._tats[2 * index + 1]
            self._tats[2 * index + 1] = gcra_take(tat, now, per_minute, tokens)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
