"""The routing benchmark's workloads: many tenants sharing long system prompts, and no sharing.

``shared`` (multi-tenant, multi-turn): T tenants, each with its own system prompt of 2-6k tokens.
Conversation k belongs to one tenant, drawn with Zipf-like weights (a few tenants are busy, most
are not, as on a real multi-tenant service), and runs several turns; each turn's request carries
the system prompt, every earlier turn and a new user message, so it extends the previous request
token for token. What an engine can reuse: the tenant's system prompt (shared by all of its
conversations) and the conversation's own history (shared by its later turns).

``unique`` (no sharing): every request is a single turn whose prompt is distinct from its first
cache block on (it opens with the request's own number), so no engine ever holds any of it: what
remains is load balancing.

Both are deterministic from a seed, like bench/workload.py (whose text pools and ChatML token
layout they reuse): conversation k is the same in any process, and a request's token count is
known without the gateway's help.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from bench.workload import Piece, Turn, make_text

WORKLOADS = ("shared", "unique")


@dataclass(frozen=True, slots=True)
class SharedShape:
    tenants: int = 64
    system_tokens: tuple[int, int] = (2000, 6000)
    # Tenant i is drawn with weight 1 / (i + 1) ** zipf: 0 is uniform.
    zipf: float = 0.8
    turns: tuple[int, int] = (3, 8)
    user_tokens: tuple[int, int] = (30, 200)
    assistant_tokens: tuple[int, int] = (60, 250)
    max_prompt_tokens: int = 10_000


@dataclass(frozen=True, slots=True)
class UniqueShape:
    prompt_tokens: tuple[int, int] = (1000, 3000)


_POOL = 256


class ChatLayout:
    """Qwen3's chat template (ChatML) as token ids: <|im_start|>role\\n content <|im_end|>\\n."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

        self.head = {role: ids(f"<|im_start|>{role}\n") for role in ("system", "user", "assistant")}
        self.tail = ids("<|im_end|>\n")
        self.generation_prompt = self.head["assistant"]

    def message_tokens(self, role: str, piece: Piece) -> int:
        return len(self.head[role]) + len(piece.ids) + len(self.tail)

    def append(self, ids: list[int], role: str, piece: Piece) -> None:
        ids += self.head[role]
        ids += piece.ids
        ids += self.tail


class SharedWorkload:
    """Multi-tenant multi-turn chats; ``conversation(k)`` yields conversation k's requests."""

    name = "shared"

    def __init__(
        self, tokenizer_file: str | Path, seed: int = 0, shape: SharedShape = SharedShape()
    ):
        self.seed = seed
        self.shape = shape
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        rng = random.Random(f"herdsman-routing-shared-{seed}")
        self.system = [
            make_text(tokenizer, rng, rng.randint(*shape.system_tokens))
            for _ in range(shape.tenants)
        ]
        self.user = [
            make_text(tokenizer, rng, rng.randint(*shape.user_tokens)) for _ in range(_POOL)
        ]
        self.assistant = [
            make_text(tokenizer, rng, rng.randint(*shape.assistant_tokens)) for _ in range(_POOL)
        ]
        self.layout = ChatLayout(tokenizer)
        weights = [1.0 / (i + 1) ** shape.zipf for i in range(shape.tenants)]
        total = sum(weights)
        self.tenant_share = [w / total for w in weights]
        self._cumulative = list(itertools.accumulate(self.tenant_share))

    def tenant(self, k: int) -> int:
        return self._plan(k)[0]

    def _plan(self, k: int) -> tuple[int, list[tuple[Piece, Piece]]]:
        rng = random.Random(self.seed * 1_000_003 + k)
        tenant = rng.choices(range(self.shape.tenants), cum_weights=self._cumulative)[0]
        layout = self.layout
        context = layout.message_tokens("system", self.system[tenant])
        turns: list[tuple[Piece, Piece]] = []
        for _ in range(rng.randint(*self.shape.turns)):
            user, reply = rng.choice(self.user), rng.choice(self.assistant)
            prompt = context + layout.message_tokens("user", user) + len(layout.generation_prompt)
            if turns and prompt > self.shape.max_prompt_tokens:
                break
            turns.append((user, reply))
            context += layout.message_tokens("user", user) + layout.message_tokens(
                "assistant", reply
            )
        return tenant, turns

    def conversation(self, k: int, *, with_ids: bool = False) -> Iterator[Turn]:
        tenant, turns = self._plan(k)
        layout = self.layout
        system = self.system[tenant]
        messages: list[dict[str, str]] = [{"role": "system", "content": system.text}]
        ids: list[int] = []
        layout.append(ids, "system", system)
        for index, (user, reply) in enumerate(turns):
            messages.append({"role": "user", "content": user.text})
            layout.append(ids, "user", user)
            prompt_ids = [*ids, *layout.generation_prompt]
            yield Turn(k, index, list(messages), len(prompt_ids), prompt_ids if with_ids else None)
            # The earlier reply comes from the pool, not from the engine, so every target sees
            # the same prompts whatever its engines generated.
            messages.append({"role": "assistant", "content": reply.text})
            layout.append(ids, "assistant", reply)


class UniqueWorkload:
    """Single-turn requests, no two sharing even their first cache block."""

    name = "unique"

    def __init__(
        self, tokenizer_file: str | Path, seed: int = 0, shape: UniqueShape = UniqueShape()
    ):
        self.seed = seed
        self.shape = shape
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        rng = random.Random(f"herdsman-routing-unique-{seed}")
        self.pool = [make_text(self._tokenizer, rng, rng.randint(150, 400)) for _ in range(_POOL)]
        self.layout = ChatLayout(self._tokenizer)

    def conversation(self, k: int, *, with_ids: bool = False) -> Iterator[Turn]:
        rng = random.Random(self.seed * 1_000_003 + k)
        target = rng.randint(*self.shape.prompt_tokens)
        # The request's number opens the prompt: its first 16-token block is its own.
        parts = [f"Request {self.seed}-{k}, reference {rng.getrandbits(48):012x}."]
        size = 0
        while size < target:
            piece = rng.choice(self.pool)
            parts.append(piece.text)
            size += len(piece.ids) + 1
        text = " ".join(parts)
        piece = Piece(text, tuple(self._tokenizer.encode(text, add_special_tokens=False).ids))
        ids: list[int] = []
        self.layout.append(ids, "user", piece)
        ids += self.layout.generation_prompt
        yield Turn(k, 0, [{"role": "user", "content": text}], len(ids), ids if with_ids else None)


Workloads = SharedWorkload | UniqueWorkload


def make_workload(name: str, tokenizer_file: str | Path, seed: int = 0) -> Workloads:
    if name == "shared":
        return SharedWorkload(tokenizer_file, seed)
    if name == "unique":
        return UniqueWorkload(tokenizer_file, seed)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def describe(workload: Workloads, conversations: int = 400) -> dict[str, float]:
    """Prompt sizes, and for ``shared`` how much of them a perfect cache could serve."""
    prompts: list[int] = []
    reusable = 0
    for k in range(conversations):
        previous = 0
        for turn in workload.conversation(k):
            prompts.append(turn.prompt_tokens)
            if isinstance(workload, SharedWorkload):
                # The system prompt (once the tenant has been seen) or the previous turn's prompt.
                system = workload.layout.message_tokens(
                    "system", workload.system[workload.tenant(k)]
                )
                reusable += max(previous, system)
            previous = turn.prompt_tokens
    ordered = sorted(prompts)
    n = len(ordered)
    summary: dict[str, float] = {
        "requests_per_conversation": n / conversations,
        "prompt_mean": sum(ordered) / n,
        "prompt_p10": ordered[n // 10],
        "prompt_p50": ordered[n // 2],
        "prompt_p90": ordered[n * 9 // 10],
    }
    if isinstance(workload, SharedWorkload):
        summary["reusable_share"] = reusable / sum(ordered)
        summary["top_tenant_share"] = workload.tenant_share[0]
        summary["system_tokens_total"] = sum(len(p.ids) for p in workload.system)
    return summary
