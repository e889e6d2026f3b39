"""Admission: how many generation requests run at once, how many wait, and for how long.

The concurrency limit is gateway-wide: every gateway process publishes its own count of requests
in flight on a shared board (one slot per process; ``herdsman.serve.shared_files.SharedBoard``),
and admits a request while the sum is under the limit. Two processes deciding at the same instant
can overshoot the limit by at most one request each; no lock is shared between processes, so a
process that dies holds nothing.

Requests over the limit wait in a bounded per-process queue (first come, first served) for at
most the queue timeout; a full queue or a timeout is an ``Overloaded`` failure (HTTP 429).
The prompt tokens of the requests in flight are capped per process the same way, without a
queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from herdsman.pipeline.errors import Overloaded

# Releases in other processes cannot wake this process's queue: it looks again this often.
_POLL_SECONDS = 0.01


class InFlightBoard(Protocol):
    def total(self) -> int:
        """Requests in flight in every process."""
        ...

    def publish(self, count: int) -> None:
        """This process's own count."""
        ...


class LocalBoard:
    """One process alone: its own count is the total."""

    def __init__(self) -> None:
        self._count = 0

    def total(self) -> int:
        return self._count

    def publish(self, count: int) -> None:
        self._count = count


class Admission:
    def __init__(
        self,
        max_concurrent: int = 0,
        queue_size: int = 100,
        queue_timeout: float = 60.0,
        max_prompt_tokens: int = 0,
        board: InFlightBoard | None = None,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.max_prompt_tokens = max_prompt_tokens
        self.board: InFlightBoard = board or LocalBoard()
        self.active = 0
        self.prompt_tokens = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._poll: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        return len(self._waiters)

    # -- concurrency ---------------------------------------------------------------------------
    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is none; raises ``Overloaded``."""
        if self.max_concurrent <= 0 or (not self._waiters and self._has_room()):
            self._take()
            return
        if len(self._waiters) >= self.queue_size:
            raise Overloaded(
                f"the gateway is at its limit of {self.max_concurrent} concurrent requests and "
                f"{self.queue_size} queued; try again later",
                retry_after=1.0,
                code="queue_full",
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm_poll()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except TimeoutError:
            self._forget(waiter)
            raise Overloaded(
                f"waited {self.queue_timeout:g}s for one of {self.max_concurrent} request slots; "
                "try again later",
                retry_after=max(1.0, self.queue_timeout / 4),
                code="queue_timeout",
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as the client left: hand the slot on
            else:
                self._forget(waiter)
            raise

    def release(self) -> None:
        self.active -= 1
        self.board.publish(self.active)
        self._grant()

    def _has_room(self) -> bool:
        return self.board.total() < self.max_concurrent

    def _take(self) -> None:
        self.active += 1
        self.board.publish(self.active)

    def _grant(self) -> None:
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _arm_poll(self) -> None:
        if self._poll is None:
            self._poll = asyncio.get_running_loop().call_later(_POLL_SECONDS, self._on_poll)

    def _on_poll(self) -> None:
        self._poll = None
        self._grant()
        if self._waiters:
            self._arm_poll()

    # -- prompt tokens -------------------------------------------------------------------------
    def take_prompt_tokens(self, count: int) -> None:
        """Reserve a request's prompt tokens; raises ``Overloaded`` over the budget (a request
        alone is always admitted, however long: the context length bounds it)."""
        budget = self.max_prompt_tokens
        if budget > 0 and self.prompt_tokens and self.prompt_tokens + count > budget:
            raise Overloaded(
                f"the gateway is processing {self.prompt_tokens} prompt tokens, its limit is "
                f"{budget}; try again later",
                retry_after=1.0,
                code="prompt_tokens_in_flight",
            )
        self.prompt_tokens += count

    def release_prompt_tokens(self, count: int) -> None:
        self.prompt_tokens -= count
