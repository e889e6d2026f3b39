"""The hook through which the pipeline reports the tokens a request used, for tokens-per-minute
limits: the prompt's tokens when a generation is admitted, the completion's when it ends.

The access gate sets a meter for the request's task (a context variable, so tasks the request
spawns see it too); without one (no per-key token limit), reporting costs one lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

TokenMeter = Callable[[int], None]

_METER: ContextVar[TokenMeter | None] = ContextVar("herdsman_token_meter", default=None)


def set_meter(meter: TokenMeter | None) -> None:
    _METER.set(meter)


def count_tokens(count: int) -> None:
    """Tokens the current request used (prompt or completion); a no-op without a meter."""
    meter = _METER.get()
    if meter is not None and count > 0:
        meter(count)
