"""When and how long to wait before trying an engine request again."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, as SMG's retries (delay = initial * multiplier^attempt,
    capped, then scaled by 1 ± jitter)."""

    max_retries: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 1.5
    jitter: float = 0.2

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rng() - 1.0)))
