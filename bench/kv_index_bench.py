"""Cost of a cache-aware routing decision: the prefix index's match() at 100k indexed blocks.

    python -m bench.kv_index_bench [--write docs/benchmarks-routing.md]

The index is filled the way engines fill it, through KV events: 8 workers, block size 16, 40
tenants with 1k-token system prompts, ~900 conversations of up to ~2.4k tokens, each pinned to
a worker, so every worker holds the system prompts of its tenants and its own conversations
(~100k worker-block pairs). Then ~2.4k-token prompts are matched against all 8 workers:

- ``hit``: a known conversation (deep hit on its worker, the system prompt on others),
- ``tenant``: a new conversation of a known tenant (the system prompt, on several workers),
- ``miss``: unrelated tokens (the walk stops at the first block).

Reported per case: p50 / p99 / p99.9 / max of one call (perf_counter_ns, 20k calls, GC on, as in
the gateway), for match() from a token list (hashing included), match() from precomputed
PromptBlocks, and record_routed(). Then the same matches with every worker in approximate mode
(its frozen precise blocks plus approximate entries), the cost of applying events, of a
100k-block snapshot, and memory (tracemalloc) per indexed block.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from smg_grpc_proto.generated import common_pb2

from herdsman.routing.kv_index import KvIndex

BS = 16
WORKERS = [f"w{i}" for i in range(8)]
TENANTS = 40
SYSTEM_TOKENS = 1024
PROMPT_TOKENS = 2400
TARGET_BLOCKS = 100_000
CALLS = 20_000
VOCAB = 150_000
MARK_START = "<!-- kv-index-bench:start -->"
MARK_END = "<!-- kv-index-bench:end -->"


class _Engine:
    """Engine-side block hashes for one worker: stored events for a prompt's new blocks."""

    def __init__(self, salt: int) -> None:
        self.salt = salt
        self.hashes: dict[tuple[int, int], int] = {}  # (depth, content key) -> engine hash
        self.rng = random.Random(salt)

    def cache(self, ids: list[int], keys: list[int]) -> list[common_pb2.KvCacheEvent]:
        new: list[common_pb2.KvBlock] = []
        parent = None
        first_parent = None
        for depth, key in enumerate(keys):
            h = self.hashes.get((depth, key))
            if h is None:
                if not new:
                    first_parent = parent
                h = self.hashes[(depth, key)] = self.rng.getrandbits(63)
                new.append(
                    common_pb2.KvBlock(
                        block_hash=h, token_ids=ids[depth * BS : (depth + 1) * BS], block_size=BS
                    )
                )
            parent = h
        if not new:
            return []
        event = common_pb2.KvBlocksStored(blocks=new)
        if first_parent is not None:
            event.parent_block_hash = first_parent
        return [common_pb2.KvCacheEvent(stored=event)]


def _workload(rng: random.Random):
    systems = [[rng.randrange(VOCAB) for _ in range(SYSTEM_TOKENS)] for _ in range(TENANTS)]
    conversations: list[tuple[str, list[int], int]] = []  # worker, full prompt, tenant
    blocks_per_conv = PROMPT_TOKENS // BS
    # System prompts count once per worker that holds them; conversations on top.
    n_conv = (TARGET_BLOCKS - TENANTS * 4 * (SYSTEM_TOKENS // BS)) // (
        blocks_per_conv - SYSTEM_TOKENS // BS
    )
    for i in range(n_conv):
        tenant = rng.randrange(TENANTS)
        # Each tenant's conversations go to 4 of the 8 workers.
        worker = WORKERS[(tenant + rng.randrange(4) * 2) % len(WORKERS)]
        tail = [rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS - SYSTEM_TOKENS)]
        conversations.append((worker, systems[tenant] + tail, tenant))
        del i
    return systems, conversations


def _fill(index: KvIndex, conversations) -> tuple[float, int]:
    engines = {w: _Engine(i) for i, w in enumerate(WORKERS)}
    events: list[tuple[str, common_pb2.KvCacheEvent]] = []
    for worker, ids, _ in conversations:
        keys = index.prompt_blocks(ids).keys
        # The conversation grew turn by turn: an event per ~300-token turn.
        for end in range(SYSTEM_TOKENS // BS, len(keys) + 1, 300 // BS):
            events += [(worker, e) for e in engines[worker].cache(ids, keys[:end])]
        events += [(worker, e) for e in engines[worker].cache(ids, keys)]
    blocks = sum(len(e.stored.blocks) for _, e in events)
    start = time.perf_counter()
    for worker, event in events:
        index.apply_event(worker, event)
    return time.perf_counter() - start, blocks


def _percentiles(samples: list[int]) -> dict[str, float]:
    samples.sort()
    n = len(samples)

    def at(q: float) -> float:
        return samples[min(n - 1, int(q * n))] / 1000

    return {
        "p50": at(0.5),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": samples[-1] / 1000,
        "mean": statistics.fmean(samples) / 1000,
    }


def _decide(index: KvIndex, ids: list[int], worker: str) -> None:
    blocks = index.prompt_blocks(ids)
    index.match(blocks, WORKERS)
    index.record_routed(worker, blocks)


def _time(calls: list[Callable[[], object]]) -> dict[str, float]:
    """Per-call wall time (what a request waits) and CPU time of this thread (the same minus
    preemption by other processes: the machine may be shared)."""
    for call in calls[:500]:
        call()
    wall, cpu = [], []
    clock, thread = time.perf_counter_ns, time.thread_time_ns
    for call in calls:
        c0 = thread()
        t0 = clock()
        call()
        t1 = clock()
        cpu.append(thread() - c0)
        wall.append(t1 - t0)
    result = _percentiles(wall)
    result["cpu p50"] = _percentiles(cpu)["p50"]
    result["cpu p99"] = _percentiles(cpu)["p99"]
    return result


def _queries(rng: random.Random, systems, conversations) -> dict[str, list[list[int]]]:
    hit = [conversations[rng.randrange(len(conversations))][1] for _ in range(CALLS)]
    tenant = []
    for _ in range(CALLS):
        system = systems[rng.randrange(TENANTS)]
        tenant.append(system + [rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS - SYSTEM_TOKENS)])
    miss = [[rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS)] for _ in range(CALLS // 4)] * 4
    return {"hit": hit, "tenant": tenant, "miss": miss}


def run() -> dict[str, object]:
    rng = random.Random(1)
    systems, conversations = _workload(rng)
    load_before = os.getloadavg()[0]
    # Memory: the same fill under tracemalloc (which slows it down several times).
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    traced = KvIndex(BS)
    _fill(traced, conversations)
    heap = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del traced
    index = KvIndex(BS, speculative_ttl=5.0)  # as the gateway makes it
    for w in WORKERS:
        index.set_precise(w, True)
    fill_seconds, fill_blocks = _fill(index, conversations)
    stats = index.stats()
    result: dict[str, object] = {
        "stats": stats,
        "heap_bytes": heap,
        "apply_blocks_per_s": fill_blocks / fill_seconds,
        "apply_blocks": fill_blocks,
    }
    queries = _queries(rng, systems, conversations)
    # Sanity: the hit case matches deep on its worker.
    worker, ids, _ = conversations[0]
    assert index.match(ids, WORKERS)[worker] == (PROMPT_TOKENS - 1) // BS * BS
    gc.collect()
    timings: dict[str, dict[str, dict[str, float]]] = {}
    for case, prompts in queries.items():
        blocks = [index.prompt_blocks(p) for p in prompts]
        timings[case] = {
            "match(ids)": _time([lambda p=p: index.match(p, WORKERS) for p in prompts]),
            "prompt_blocks(ids)": _time([lambda p=p: index.prompt_blocks(p) for p in prompts]),
            "match(blocks)": _time([lambda b=b: index.match(b, WORKERS) for b in blocks]),
        }
    for case, prompts in queries.items():
        # What cache_aware does per request: the keys once, the match, the speculative record
        # (O(1): the prompt's deepest keys, matched by the next turn before its events come).
        timings[case]["decision: keys + match + record"] = _time(
            [lambda i=i, p=p: _decide(index, p, WORKERS[i % 8]) for i, p in enumerate(prompts)]
        )
    # For a precise worker record_routed only keeps a speculative entry; approximate below.
    for w in WORKERS:
        index.set_precise(w, False)
    # Each worker is routed its share of the conversations, over and over: past the first
    # round, every call refreshes known entries and evicts the least recent (the bound).
    approx_ids = list(enumerate(queries["hit"][: CALLS // 4])) * 4
    timings["hit"]["record_routed(ids), approximate worker"] = _time(
        [lambda i=i, p=p: index.record_routed(WORKERS[i % 8], p) for i, p in approx_ids]
    )
    for case in ("hit", "tenant", "miss"):
        timings[case]["match(ids), all approximate"] = _time(
            [lambda p=p: index.match(p, WORKERS) for p in queries[case]]
        )
    result["timings"] = timings
    result["approx_stats"] = index.stats()
    result["snapshot"] = _snapshot_cost()
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def _snapshot_cost() -> dict[str, float]:
    """A relay's snapshot of 100k blocks: one stored event per block, parents first."""
    rng = random.Random(2)
    index = KvIndex(BS)
    events = [common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared())]
    hashes = iter(range(1, 10**9))
    while len(events) < 100_001:
        parent = None
        for _ in range(150):  # 2.4k-token chains
            h = next(hashes)
            block = common_pb2.KvBlock(
                block_hash=h, token_ids=[rng.randrange(VOCAB) for _ in range(BS)], block_size=BS
            )
            stored = common_pb2.KvBlocksStored(blocks=[block])
            if parent is not None:
                stored.parent_block_hash = parent
            events.append(common_pb2.KvCacheEvent(stored=stored))
            parent = h
    slices = []
    start = time.perf_counter()
    for i in range(0, len(events), 2048):
        t0 = time.perf_counter()
        for event in events[i : i + 2048]:
            index.apply_event("w", event)
        slices.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    t0 = time.perf_counter()
    index.reset_worker("w")
    reset = time.perf_counter() - t0
    t0 = time.perf_counter()
    while index.maintain(4096):
        pass
    cleanup = time.perf_counter() - t0
    return {
        "blocks": len(events) - 1,
        "seconds": total,
        "slice_ms_max": max(slices) * 1000,
        "slice_ms_mean": statistics.fmean(slices) * 1000,
        "reset_us": reset * 1e6,
        "cleanup_ms": cleanup * 1000,
    }


def render(result: dict[str, object]) -> str:
    stats = result["stats"]
    timings = result["timings"]
    snap = result["snapshot"]
    lines = [
        MARK_START,
        "## Routing decision cost",
        "",
        "`python -m bench.kv_index_bench --write docs/benchmarks-routing.md`"
        f" ({platform.python_implementation()} {platform.python_version()},"
        f" numpy {np.__version__}, {platform.machine()}; one process, GC on). The prefix index"
        f" of `cache_aware` filled through KV events: {len(WORKERS)} workers, block size {BS},"
        f" {TENANTS} tenants with {SYSTEM_TOKENS}-token system prompts, conversations of"
        f" {PROMPT_TOKENS} tokens pinned to workers: **{stats['blocks']:,} indexed blocks**"
        f" ({stats['distinct_blocks']:,} distinct). Each call matches one {PROMPT_TOKENS}-token"
        f" prompt against all {len(WORKERS)} workers; µs per call over {CALLS:,} calls.",
        "",
        "| case | call | p50 | p99 | p99.9 | max | CPU p50 | CPU p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, calls in timings.items():
        for call, t in calls.items():
            lines.append(
                f"| {case} | `{call}` | {t['p50']:.1f} | {t['p99']:.1f} | {t['p99.9']:.1f}"
                f" | {t['max']:.0f} | {t['cpu p50']:.1f} | {t['cpu p99']:.1f} |"
            )
    heap = result["heap_bytes"]
    lines += [
        "",
        "- `hit`: a known conversation (deep on its worker, the system prompt on others);"
        " `tenant`: a new conversation of a known tenant; `miss`: unrelated tokens."
        " `match(ids)` includes computing the prompt's block keys (`prompt_blocks`), which a"
        " policy can do once per request and pass to `match` and `record_routed`. Wall"
        " time is what a request waits; CPU time (this thread's) leaves out preemption by other"
        f" processes (load average {result['load'][0]:.1f} → {result['load'][1]:.1f} during"
        f" the run, {os.cpu_count()} CPUs).",
        f"- Memory: {heap / stats['blocks']:.0f} bytes per indexed block (tracemalloc,"
        f" {heap / 2**20:.1f} MiB for {stats['blocks']:,}); `stats()['estimated_bytes']` said"
        f" {stats['estimated_bytes'] / 2**20:.1f} MiB. The gateway's default cap"
        " (`--kv-index-max-blocks` 262,144) is about"
        f" {heap / stats['blocks'] * 262_144 / 2**20:.0f} MiB per model and gateway process.",
        f"- Applying stored events: {result['apply_blocks_per_s'] / 1000:.0f}k blocks/s"
        f" ({result['apply_blocks']:,} blocks in turn-sized events of about 19).",
        f"- A {snap['blocks']:,}-block snapshot (one event per block): {snap['seconds']:.2f} s,"
        f" applied in 2048-block slices of {snap['slice_ms_mean']:.1f} ms mean,"
        f" {snap['slice_ms_max']:.1f} ms max, the subscriber yielding between slices;"
        f" resetting that worker: {snap['reset_us']:.0f} µs, its deferred cleanup"
        f" {snap['cleanup_ms']:.0f} ms in all, in slices.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Routing benchmarks\n\n"
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END) + "\n?", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="insert the section into this markdown file")
    args = parser.parse_args()
    section = render(run())
    print(section)
    if args.write:
        write(args.write, section)


if __name__ == "__main__":
    main()
