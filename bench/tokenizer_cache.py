"""Tokenization cost of a growing multi-turn chat, with and without the L0/L1 cache.

    python -m bench.tokenizer_cache [--write docs/benchmarks-tokenizer.md]

A 20-turn chat growing to about 16k tokens (Qwen3 template and tokenizer). Per turn: the CPU time
to encode the whole templated prompt, for each backend without cache and with L0+L1 (a fresh
cache per run, so turn t has seen turns 1..t-1 only). Then the L1 hit rate when conversations'
turns are spread over N gateway processes, each with its own cache.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from bench.workload import make_text
from herdsman.tokenizer import load_model_tokenizer
from herdsman.tokenizer.cache import split_segments
from herdsman.tokenizer.tokenizer import ModelTokenizer

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


def hit_rates(tokenizer: ModelTokenizer, processes: int, sticky: bool, chats: int = 40) -> float:
    """Fraction of a prompt's tokens that came from L1 (not encoded), averaged over turns > 1."""
    caches = []
    for _ in range(processes):
        copy = load_model_tokenizer(MODEL)
        copy.enable_cache(0, BUDGET)  # L1 only: L0 never hits on a growing chat anyway
        caches.append(copy)
    rng = random.Random(7)
    all_prompts = [conversation(tokenizer, 1000 + c, turns=8) for c in range(chats)]
    reused = total = 0
    for turn in range(8):
        for c, prompts in enumerate(all_prompts):
            target = caches[c % processes] if sticky else rng.choice(caches)
            cache = target.cache
            assert cache is not None and cache.l1 is not None and cache._splitting is not None
            held = cache.l1._items
            hit = sum(
                len(held[piece][0])
                for piece in split_segments(cache._splitting, prompts[turn])
                if piece in held
            )
            ids = target.encode(prompts[turn], add_special_tokens=False)
            if turn > 0:
                reused += hit
                total += len(ids)
    return reused / total


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
        "L1 share of prompt tokens not encoded again (turns 2–8 of 40 chats):",
        "",
        "| processes | turns spread at random | turns sticky to one process |",
        "|---|---|---|",
    ]
    for n in (1, 2, 4, 8):
        random_rate = hit_rates(backends["fastokens"], n, sticky=False)
        sticky_rate = hit_rates(backends["fastokens"], n, sticky=True)
        lines.append(f"| {n} | {random_rate:.0%} | {sticky_rate:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
