"""Tokenization cost of a growing multi-turn chat, with and without the L0/L1 cache.

    python -m bench.tokenizer_cache [--write docs/benchmarks-tokenizer.md]

A 20-turn chat growing to about 16k tokens (Qwen3 template and tokenizer). Per turn: the CPU time
to encode the whole templated prompt, for each backend without cache and with L0+L1 (a fresh
cache per run, so turn t has seen turns 1..t-1 only). Then the L1 hit rate when conversations'
turns are spread over N gateway processes, each with its own cache.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import string
import time
from multiprocessing.connection import Connection
from pathlib import Path

from bench.workload import make_text
from herdsman.serve.shared_files import make_store_directory, remove_store_directory
from herdsman.tokenizer import load_model_tokenizer
from herdsman.tokenizer.cache import TokenizationCache, split_segments
from herdsman.tokenizer.shared_store import SharedSegmentStore
from herdsman.tokenizer.tokenizer import ModelTokenizer

READING = """
## Reading the numbers

- L1 caches the ids of each plain-text segment between atomic added tokens, keyed by content, so a
  new turn encodes only its new segments. With the `tokenizers` backend that is what makes later
  turns cheap; the cost left is splitting the prompt and turning cached uint32 ids back into
  Python ints.
- fastokens needs no help: it is fast, and keeps its own caches, so the L0/L1 layer only adds its
  own cost (mostly that int conversion), in one process or spread over many. Hence
  `--tokenizer-cache auto` (the default): on for `tokenizers`, off for fastokens.
- Spread over processes, a per-process L1 loses what other processes encoded; the shared store
  (LMDB in /dev/shm behind each process's L1, generational eviction) keeps reuse at the
  one-process level for any number of processes. Its cost is a read transaction per prompt and a
  write transaction per prompt with new segments (microseconds).
- Long prompts: `tokenizers`' `encode` holds the GIL for its whole run, so on the event loop it
  stalls every other stream; `encode_async` sends what must be encoded of a long prompt to a
  thread, through `encode_batch`, which releases the GIL (fastokens releases it in `encode`).
  What still holds the GIL is building the Python list of ids (the stall left in the table).
"""

MODEL = Path(__file__).resolve().parent.parent / "models" / "qwen3"
BUDGET = 256 << 20


def conversation(tokenizer: ModelTokenizer, seed: int, turns: int = 20) -> list[str]:
    """The templated prompt of each turn of one chat."""
    rng = random.Random(seed)
    raw = tokenizer.tokenizer
    messages = [{"role": "system", "content": make_text(raw, rng, 1000).text}]
    prompts = []
    assert tokenizer.chat_template is not None
    for _ in range(turns):
        messages.append({"role": "user", "content": make_text(raw, rng, 300).text})
        prompts.append(tokenizer.chat_template.render(messages))
        messages.append({"role": "assistant", "content": make_text(raw, rng, 450).text})
    return prompts


def per_turn_ms(
    tokenizer: ModelTokenizer, prompts: list[str], cached: bool, runs: int
) -> list[float]:
    samples: list[list[float]] = [[] for _ in prompts]
    for _ in range(runs):
        tokenizer.enable_cache(BUDGET if cached else 0, BUDGET if cached else 0)
        for i, prompt in enumerate(prompts):
            start = time.process_time()
            tokenizer.encode(prompt, add_special_tokens=False)
            samples[i].append((time.process_time() - start) * 1000)
    return [statistics.median(s) for s in samples]


def varied_text(rng: random.Random, words: int) -> str:
    """Words no word-level cache has seen: letters, CJK, emoji (fastokens' worst case)."""
    pool = [*string.ascii_letters, "_", "日本語", "🙂", "é"]
    return " ".join("".join(rng.choices(pool, k=rng.randint(1, 9))) for _ in range(words))


class _CountingEncoder:
    """The backend's encoder, counting the tokens it had to produce (what no cache saved)."""

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self._encode = tokenizer._raw_encode
        self.tokens = 0

    def __call__(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = self._encode(text, add_special_tokens)
        self.tokens += len(ids)
        return ids


def _gateway_process(fast: bool, store_dir: str | None, l1: int, conn: Connection) -> None:
    """One stand-in gateway process: a tokenizer with L1 (and the shared store when given)."""
    tokenizer = load_model_tokenizer(MODEL, fast=fast)
    tokenizer.enable_cache(0, BUDGET)  # L1 only: L0 never hits on a growing chat anyway
    assert tokenizer.cache is not None
    splitting = tokenizer.cache._splitting
    assert splitting is not None
    shared = SharedSegmentStore(store_dir, BUDGET) if store_dir else None
    encoder = _CountingEncoder(tokenizer)
    cache = TokenizationCache(encoder, splitting, 0, l1, shared)
    while (prompt := conn.recv()) is not None:
        encoder.tokens = 0
        start = time.process_time()
        ids = cache.encode(prompt, add_special_tokens=False)
        cpu = time.process_time() - start
        special = sum(
            1 for piece in split_segments(splitting, prompt) if piece in splitting.token_ids
        )
        conn.send((len(ids) - special, encoder.tokens, cpu))


def hit_rates(
    processes: int, placement: str, fast: bool = True, chats: int = 40
) -> tuple[float, float]:
    """Share of later turns' text tokens that no process had to encode, and CPU ms per later turn.

    `placement`: "random" (each turn to a random process, as SO_REUSEPORT spreads connections),
    "shared" (random, plus the store the processes share), "sticky" (a chat stays on one), or
    "off" (random, no cache at all).
    """
    spawn = multiprocessing.get_context("spawn")
    store_dir = make_store_directory() if placement == "shared" else None
    pipes, children = [], []
    try:
        for _ in range(processes):
            parent, child = spawn.Pipe()
            l1 = 0 if placement == "off" else BUDGET
            proc = spawn.Process(target=_gateway_process, args=(fast, store_dir, l1, child))
            proc.start()
            pipes.append(parent)
            children.append(proc)
        reference = load_model_tokenizer(MODEL)
        all_prompts = [conversation(reference, 1000 + c, turns=8) for c in range(chats)]
        rng = random.Random(7)
        text_tokens = encoded = 0
        cpu: list[float] = []
        for turn in range(8):
            for c, prompts in enumerate(all_prompts):
                pipe = pipes[c % processes] if placement == "sticky" else rng.choice(pipes)
                pipe.send(prompts[turn])
                plain, fresh, seconds = pipe.recv()
                if turn > 0:
                    text_tokens += plain
                    encoded += fresh
                    cpu.append(seconds * 1000)
        for pipe in pipes:
            pipe.send(None)
        for proc in children:
            proc.join(30)
    finally:
        if store_dir:
            remove_store_directory(store_dir)
    return 1 - encoded / text_tokens, statistics.mean(cpu)


def loop_stall_ms(tokenizer: ModelTokenizer, text: str, use_async: bool) -> float:
    """The longest time the event loop could not run while `text` was encoded."""

    async def measure() -> float:
        worst = 0.0
        done = False

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        if use_async:
            await tokenizer.encode_async(text, add_special_tokens=False)
        else:
            tokenizer.encode(text, add_special_tokens=False)
        done = True
        await task
        return worst * 1000

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    backends = {
        "tokenizers": load_model_tokenizer(MODEL, fast=False),
        "fastokens": load_model_tokenizer(MODEL),
    }
    prompts = conversation(backends["tokenizers"], seed=1)
    sizes = [len(backends["tokenizers"].encode(p, add_special_tokens=False)) for p in prompts]
    lines = [
        "# Tokenization cache benchmark",
        "",
        f"Command: `python -m bench.tokenizer_cache --runs {args.runs}`. A 20-turn chat growing "
        f"to {sizes[-1]} tokens (Qwen3 template and tokenizer); CPU ms to encode each turn's "
        "whole prompt, median of the runs, a fresh cache per run.",
        "",
        "| turn | tokens | tokenizers | tokenizers + L0/L1 | speed-up | fastokens | "
        "fastokens + L0/L1 | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = {
        (name, cached): per_turn_ms(tok, prompts, cached, args.runs)
        for name, tok in backends.items()
        for cached in (False, True)
    }
    for i in range(len(prompts)):
        if i not in (0, 1, 4, 9, 14, 19):
            continue
        t0, t1 = results[("tokenizers", False)][i], results[("tokenizers", True)][i]
        f0, f1 = results[("fastokens", False)][i], results[("fastokens", True)][i]
        lines.append(
            f"| {i + 1} | {sizes[i]} | {t0:.2f} | {t1:.2f} | {t0 / max(t1, 1e-6):.1f}× | "
            f"{f0:.2f} | {f1:.2f} | {f0 / max(f1, 1e-6):.1f}× |"
        )
    late = slice(10, 20)
    for name in backends:
        plain = statistics.mean(results[(name, False)][late])
        cached = statistics.mean(results[(name, True)][late])
        lines.append("")
        lines.append(
            f"Turns 11–20, {name}: {plain:.2f} ms uncached vs {cached:.2f} ms with L0/L1 "
            f"({plain / cached:.1f}× less)."
        )
    lines += [
        "",
        "L1 across gateway processes: 40 chats of 8 turns (to ~6k tokens), each turn sent to a "
        "real process as the placement says (random: as SO_REUSEPORT spreads connections; "
        "sticky: a chat stays on one). Reuse is the share of turns 2–8's text tokens no "
        "process had to encode again; CPU is ms per turn 2–8 in the process, encoding included.",
        "",
        "tokenizers backend (where the cache is on by default):",
        "",
        "| processes | random: reuse | random: CPU | random + shared store: reuse | "
        "random + shared store: CPU | sticky: reuse |",
        "|---|---|---|---|---|---|",
    ]
    fast_rows = []
    for n in (1, 2, 4, 8):
        rand, rand_cpu = hit_rates(n, "random", fast=False)
        shared, shared_cpu = hit_rates(n, "shared", fast=False)
        sticky, _ = hit_rates(n, "sticky", fast=False)
        row = f"| {n} | {rand:.0%} | {rand_cpu:.2f} | {shared:.0%} | {shared_cpu:.2f} |"
        lines.append(f"{row} {sticky:.0%} |")
        _, off_cpu = hit_rates(n, "off")
        _, fast_rand_cpu = hit_rates(n, "random")
        _, fast_shared_cpu = hit_rates(n, "shared")
        fast_rows.append(f"| {n} | {off_cpu:.2f} | {fast_rand_cpu:.2f} | {fast_shared_cpu:.2f} |")
    lines += [
        "",
        "fastokens backend, CPU ms per turn 2–8, turns at random:",
        "",
        "| processes | no cache | L1 | L1 + shared store |",
        "|---|---|---|---|",
        *fast_rows,
    ]
    long_text = varied_text(random.Random(5), 30_000)
    lines += [
        "",
        f"Longest event-loop stall while one prompt of {len(long_text) // 1000}k characters of "
        f"varied text ({len(backends['tokenizers'].encode(long_text, add_special_tokens=False))} "
        "tokens, not cached) is encoded, median of 3, ms:",
        "",
        "| backend | encode on the loop | encode_async |",
        "|---|---|---|",
    ]
    for name, tok in backends.items():
        tok.enable_cache(0, 0)
        on_loop = statistics.median(loop_stall_ms(tok, long_text, False) for _ in range(3))
        off_loop = statistics.median(loop_stall_ms(tok, long_text, True) for _ in range(3))
        lines.append(f"| {name} | {on_loop:.1f} | {off_loop:.1f} |")
    text = "\n".join(lines) + "\n" + READING
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
