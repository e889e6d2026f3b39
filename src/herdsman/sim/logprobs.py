"""Deterministic, plausible-looking logprobs for simulated tokens.

Values depend only on (request key, position, token), so a retried request reports the same
numbers. The alternatives share the probability mass the sampled token leaves over, halving at
each rank, so a top-k list never sums past 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_MASK64 = (1 << 64) - 1
# -1 asks vLLM for the whole vocabulary; nobody wants that from a simulator.
MAX_TOP_LOGPROBS = 20


def _mix(value: int) -> int:
    # splitmix64 finaliser: cheap, and consecutive positions give unrelated outputs.
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _position(
    key: int, position: int, token: int, top_n: int, vocab_size: int
) -> tuple[float, list[tuple[float, int]]]:
    """The token's logprob at one position, and its top_n alternatives (itself included)."""
    bits = _mix((key * 1_000_003 + position) & _MASK64)
    # The sampled token's probability falls between roughly 0.2 and 0.99.
    chosen_p = 0.2 + 0.79 * ((bits & 0xFFFF) / 0xFFFF)
    chosen = math.log(chosen_p)
    if top_n <= 0:
        return chosen, []
    rest = 1.0 - chosen_p
    entries = [(chosen, token)]
    for rank in range(1, top_n):
        alt = (token + 1 + ((bits >> (rank * 3)) % 997) * rank) % vocab_size
        if alt == token:
            alt = (alt + 1) % vocab_size
        entries.append((math.log(rest * 0.5**rank), alt))
    entries.sort(key=lambda e: -e[0])
    return chosen, entries


def fill_output_logprobs(
    message: Any,
    *,
    key: int,
    first_position: int,
    token_ids: Sequence[int],
    top_n: int,
    vocab_size: int,
) -> None:
    """Fill an OutputLogProbs message (vLLM and SGLang share its shape)."""
    top_n = min(top_n, MAX_TOP_LOGPROBS)
    logprobs: list[float] = []
    for offset, token in enumerate(token_ids):
        chosen, entries = _position(key, first_position + offset, token, top_n, vocab_size)
        logprobs.append(chosen)
        if top_n > 0:
            message.top_logprobs.add(
                values=[e[0] for e in entries], token_ids=[e[1] for e in entries]
            )
    message.token_logprobs.extend(logprobs)
    message.token_ids.extend(token_ids)


def fill_input_logprobs(
    message: Any, *, key: int, prompt_ids: Sequence[int], top_n: int, vocab_size: int
) -> None:
    """Fill an InputLogProbs message: as vLLM's servicer does, the first token has no value."""
    top_n = min(top_n, MAX_TOP_LOGPROBS)
    for position, token in enumerate(prompt_ids):
        entry = message.token_logprobs.add()
        if position == 0:
            if top_n > 0:
                message.top_logprobs.add()
            continue
        # Prompt positions get their own key space, apart from the output's.
        chosen, entries = _position(~key & _MASK64, position, token, top_n, vocab_size)
        entry.value = chosen
        if top_n > 0:
            message.top_logprobs.add(
                values=[e[0] for e in entries], token_ids=[e[1] for e in entries]
            )
    message.token_ids.extend(prompt_ids)
