"""The prefix index (routing/kv_index.py) and its content keys (routing/kv_hash.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smg_grpc_proto.generated import common_pb2
from tests.routing.kvsynth import SynthEngine, engine_hash, removed, stored

from herdsman.routing import kv_hash
from herdsman.routing.kv_hash import chain_keys, kv_namespace, prompt_keys
from herdsman.routing.kv_index import KvIndex

BS = 4


def tokens(n: int, start: int = 1) -> list[int]:
    return list(range(start, start + n))


def feed(index: KvIndex, worker: str, events: list[common_pb2.KvCacheEvent]) -> None:
    for event in events:
        index.apply_event(worker, event)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- keys ------------------------------------------------------------------------------------
def test_keys_are_the_same_in_every_process() -> None:
    ids = [random.Random(7).randrange(200_000) for _ in range(1000)]
    here = prompt_keys(ids, 16, len(ids) // 16, 0) + prompt_keys(ids, 16, 3, 12345)
    code = (
        "import random, sys; from herdsman.routing.kv_hash import prompt_keys; "
        "ids = [random.Random(7).randrange(200_000) for _ in range(1000)]; "
        "print(prompt_keys(ids, 16, len(ids) // 16, 0) + prompt_keys(ids, 16, 3, 12345))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(here)


def test_keys_of_a_list_and_an_array_agree_and_depend_on_every_token() -> None:
    ids = tokens(64)
    keys = prompt_keys(ids, BS, 16)
    assert keys == prompt_keys(np.array(ids), BS, 16)
    assert len(set(keys)) == 16
    for position in (0, 5, 63):
        changed = list(ids)
        changed[position] += 1
        other = prompt_keys(changed, BS, 16)
        block = position // BS
        assert other[:block] == keys[:block]
        assert all(a != b for a, b in zip(other[block:], keys[block:], strict=True))
    # A block of zeros still moves the key: a prefix and its extension never share one.
    assert len(set(prompt_keys([0] * 16, BS, 4))) == 4


@pytest.mark.skipif(kv_hash._kvhash is None, reason="the C extension is not built")
@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**40), max_size=300),
    block_size=st.sampled_from([1, 4, 16]),
    seed=st.integers(0, 2**64 - 1),
    container=st.sampled_from([list, tuple]),
)
def test_c_and_numpy_keys_agree(
    ids: list[int], block_size: int, seed: int, container: type
) -> None:
    n_blocks = len(ids) // block_size
    with_c = prompt_keys(container(ids), block_size, n_blocks, seed)
    saved, kv_hash._kvhash = kv_hash._kvhash, None
    try:
        with_numpy = prompt_keys(container(ids), block_size, n_blocks, seed)
    finally:
        kv_hash._kvhash = saved
    assert with_c == with_numpy


def test_keys_of_odd_inputs_fall_back_to_numpy() -> None:
    class Token(int):
        pass

    ids = tokens(32)
    keys = prompt_keys(ids, BS, 8)
    assert prompt_keys([Token(t) for t in ids], BS, 8) == keys  # int subclasses
    assert prompt_keys(np.array(ids, dtype=np.int32), BS, 8) == keys
    assert len(prompt_keys([-1] * 8, BS, 2)) == 2  # nonsense, but no error


# -- matching from events -----------------------------------------------------------------------
def test_prefix_match_follows_the_engines_chains() -> None:
    index = KvIndex(BS)
    engine = SynthEngine(BS)
    prompt = tokens(20)  # 5 blocks
    feed(index, "w0", engine.cache(prompt))
    # The last token is never cached: 20 tokens match 16 (engines recompute the last one).
    assert index.match(prompt, ["w0", "w1"]) == {"w0": 16, "w1": 0}
    assert index.match([*prompt, 99], ["w0"]) == {"w0": 20}
    assert index.match(tokens(9) + [500] * 20, ["w0"]) == {"w0": 8}
    assert index.match([7, *tokens(30)[1:]], ["w0"]) == {"w0": 0}
    # The conversation grows: the engine stores only the new blocks, under the last cached one.
    longer = prompt + tokens(12, start=100)
    events = engine.cache(longer)
    assert events[0].stored.parent_block_hash == engine.by_prefix[tuple(prompt)]
    feed(index, "w0", events)
    assert index.match([*longer, 1], ["w0"]) == {"w0": 32}
    assert index.stats()["blocks"] == 8


def test_removal_cuts_the_prefix_where_the_block_went() -> None:
    index = KvIndex(BS)
    engine = SynthEngine(BS)
    prompt = tokens(33)
    feed(index, "w0", engine.cache(prompt))
    third = engine.by_prefix[tuple(prompt[:12])]
    feed(index, "w0", engine.evict([third]))
    assert index.match(prompt, ["w0"]) == {"w0": 8}
    assert index.stats()["blocks"] == 7
    assert index.stats()["blocks_removed"] == 1


def test_workers_share_blocks_and_lose_them_separately() -> None:
    index = KvIndex(BS)
    a, b = SynthEngine(BS, salt=1), SynthEngine(BS, salt=2)
    prompt = tokens(17)
    feed(index, "a", a.cache(prompt))
    feed(index, "b", b.cache(prompt[:9]))
    assert index.match(prompt, ["a", "b"]) == {"a": 16, "b": 8}
    assert index.stats()["distinct_blocks"] == 4
    feed(index, "a", a.clear())
    assert index.match(prompt, ["a", "b"]) == {"a": 0, "b": 8}
    index.maintain()
    assert index.stats()["distinct_blocks"] == 2


def test_physical_copies_are_counted() -> None:
    index = KvIndex(BS)
    h = engine_hash(0, None, tokens(4))
    event = stored([(h, tokens(4))], None, BS)
    feed(index, "w", [event, event])  # two copies of one block, as engines may cache
    feed(index, "w", [removed([h])])
    assert index.match(tokens(5), ["w"]) == {"w": 4}
    feed(index, "w", [removed([h])])
    assert index.match(tokens(5), ["w"]) == {"w": 0}
    feed(index, "w", [removed([h])])
    assert index.stats()["unknown_removals"] == 1


def test_two_engine_hashes_for_one_content() -> None:
    index = KvIndex(BS)
    h1, h2 = 11, 22
    feed(index, "w", [stored([(h1, tokens(4))], None, BS), stored([(h2, tokens(4))], None, BS)])
    feed(index, "w", [removed([h1])])
    assert index.match(tokens(5), ["w"]) == {"w": 4}
    feed(index, "w", [removed([h2])])
    assert index.match(tokens(5), ["w"]) == {"w": 0}


def test_unknown_parent_is_dropped_and_counted() -> None:
    index = KvIndex(BS)
    feed(index, "w", [stored([(5, tokens(4, 9))], 12345, BS)])
    assert index.stats()["dropped_unknown_parent"] == 1
    assert index.stats()["blocks"] == 0
    # A root block needs no parent.
    feed(index, "w", [stored([(6, tokens(4))], None, BS)])
    assert index.match(tokens(5), ["w"]) == {"w": 4}


def test_partial_and_foreign_sized_blocks_end_the_chain() -> None:
    index = KvIndex(BS)
    event = stored([(1, tokens(4)), (2, tokens(3, 5)), (3, tokens(4, 8))], None, BS)
    feed(index, "w", [event])
    assert index.stats()["dropped_invalid"] == 2
    assert index.match(tokens(12), ["w"]) == {"w": 4}


def test_lora_salt_and_extra_keys_keep_blocks_apart() -> None:
    index = KvIndex(BS)
    prompt = tokens(9)
    feed(index, "lora", [stored([(1, tokens(4)), (2, tokens(4, 5))], None, BS, lora_name="sql")])
    feed(index, "salt", [stored([(3, tokens(4)), (4, tokens(4, 5))], None, BS, cache_salt="t1")])
    plain = index.match(prompt, ["lora", "salt"])
    assert plain == {"lora": 0, "salt": 0}
    assert index.match(prompt, ["lora", "salt"], namespace=kv_namespace("sql")) == {
        "lora": 8,
        "salt": 0,
    }
    assert index.match(prompt, ["lora", "salt"], namespace=kv_namespace(cache_salt="t1")) == {
        "lora": 0,
        "salt": 8,
    }
    # vLLM repeats the LoRA name among a block's extra keys: it is the namespace, not extra.
    named = stored([(5, tokens(4))], None, BS, lora_name="sql")
    named.stored.blocks[0].extra_keys.add(text="sql")
    feed(index, "lora2", [named])
    assert index.match(prompt, ["lora2"], namespace=kv_namespace("sql")) == {"lora2": 4}
    # An image's identifier is an input of the block's hash: its tokens alone do not match.
    image = stored([(6, tokens(4)), (7, tokens(4, 5))], None, BS)
    image.stored.blocks[0].extra_keys.add(multimodal=common_pb2.KvMultimodalKey(identifier="x"))
    feed(index, "mm", [image])
    assert index.match(prompt, ["mm"]) == {"mm": 0}
    assert index.stats()["blocks"] == 7


def test_only_local_device_full_attention_engine_blocks_are_indexed() -> None:
    index = KvIndex(BS)
    skipped = [
        {"locality": common_pb2.KV_CACHE_LOCALITY_REMOTE},
        {"tier": common_pb2.KV_CACHE_TIER_HOST},
        {"medium": "CPU"},
        {"medium": "CPU_PINNED"},
        {"group_idx": 1},
        {"kv_cache_spec_kind": "sliding_window"},
        {"kv_cache_spec_kind": "mamba"},
        {"kv_cache_spec_sliding_window": 128},
        {"ownership": "lmcache"},
    ]
    for i, fields in enumerate(skipped):
        feed(index, f"w{i}", [stored([(1, tokens(4))], None, BS, **fields)])
    host_level = stored([(1, tokens(4))], None, BS)
    host_level.stored.blocks[0].cache_level = 1
    feed(index, "wl", [host_level])
    assert index.stats()["blocks"] == 0
    assert index.stats()["ignored"] == len(skipped) + 1
    kept = [
        {},
        {"locality": common_pb2.KV_CACHE_LOCALITY_LOCAL},
        {"tier": common_pb2.KV_CACHE_TIER_DEVICE},
        {"medium": "GPU"},
        {"group_idx": 0},
        {"kv_cache_spec_kind": "full_attention"},
        {"kv_cache_spec_kind": "mla_attention"},
    ]
    for i, fields in enumerate(kept):
        feed(index, f"k{i}", [stored([(1, tokens(4))], None, BS, **fields)])
    workers = [f"k{i}" for i in range(len(kept))]
    assert set(index.match(tokens(5), workers).values()) == {4}
    # A copy of the block leaving the host tier does not take the device copy with it.
    feed(index, "k0", [removed([1], tier=common_pb2.KV_CACHE_TIER_HOST)])
    feed(index, "k1", [removed([1], medium="CPU")])
    feed(index, "k2", [removed([1], cache_level=2)])
    feed(index, "k3", [removed([1], group_idx=3)])
    assert set(index.match(tokens(5), workers[:4]).values()) == {4}
    # An offloading tier's clear is not the engine's.
    owned = common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared(ownership="lmcache"))
    feed(index, "k0", [owned])
    assert index.match(tokens(5), ["k0"]) == {"k0": 4}


def test_a_hybrid_models_full_attention_group_can_be_chosen() -> None:
    index = KvIndex(BS, kv_group=1)
    feed(index, "w", [stored([(1, tokens(4))], None, BS, group_idx=0)])
    feed(index, "w", [stored([(2, tokens(4))], None, BS, group_idx=1)])
    assert index.stats()["blocks"] == 1
    assert index.match(tokens(5), ["w"]) == {"w": 4}


# -- approximate mode -------------------------------------------------------------------------
def test_approximate_entries_for_workers_without_events() -> None:
    clock = Clock()
    index = KvIndex(BS, clock=clock, approx_ttl=60)
    prompt = tokens(21)
    index.record_routed("a", prompt)
    assert index.match(prompt, ["a", "b"]) == {"a": 20, "b": 0}
    assert index.match(prompt[:10], ["a"]) == {"a": 8}
    assert index.stats()["approx_entries"] == 5
    clock.now += 61
    assert index.match(prompt, ["a"]) == {"a": 0}
    assert index.stats()["approx_entries"] == 0


def test_precise_workers_record_nothing_and_resync_drops_approximate_entries() -> None:
    index = KvIndex(BS)
    engine = SynthEngine(BS)
    index.set_precise("w", True)
    index.record_routed("w", tokens(40))
    assert index.stats()["approx_entries"] == 0
    # Stream lost: the engine's last known blocks stay, routed prompts add approximate ones.
    feed(index, "w", engine.cache(tokens(9)))
    index.set_precise("w", False)
    index.record_routed("w", tokens(17, start=500))
    index.record_routed("w", tokens(13))
    assert index.match(tokens(17, start=500), ["w"]) == {"w": 16}
    assert index.match(tokens(14), ["w"]) == {"w": 12}  # approximate beyond the precise 8
    # The stream resumes with nothing missed: only the engine's own word counts again.
    index.set_precise("w", True)
    assert index.match(tokens(17, start=500), ["w"]) == {"w": 0}
    assert index.match(tokens(14), ["w"]) == {"w": 8}
    index.maintain()
    assert index.stats()["approx_entries"] == 0
    assert len(index._approx) == 0


def test_approximate_entries_are_bounded_and_what_is_routed_again_stays() -> None:
    index = KvIndex(BS, max_approx_blocks=8)  # two generations of 4 blocks
    a, b, c, d = (tokens(17, start=100 * i) for i in range(4))  # 4 blocks each
    index.record_routed("w", a)
    index.record_routed("w", b)
    assert index.match(a, ["w"]) == index.match(b, ["w"]) == {"w": 16}
    index.record_routed("w", c)  # a's generation goes
    assert index.match(a, ["w"]) == {"w": 0}
    assert index.match(b, ["w"]) == index.match(c, ["w"]) == {"w": 16}
    index.record_routed("w", b)  # routed again: into the young generation
    index.record_routed("w", d)
    assert index.match(c, ["w"]) == {"w": 0}
    assert index.match(b, ["w"]) == index.match(d, ["w"]) == {"w": 16}
    assert index.stats()["approx_entries"] <= 8
    index.maintain()
    assert len(index._approx) == 8


def test_speculative_entries_for_precise_workers_expire_fast() -> None:
    clock = Clock()
    index = KvIndex(BS, clock=clock, speculative_ttl=2.0, approx_ttl=600)
    index.set_precise("w", True)
    index.record_routed("w", tokens(9))
    assert index.match(tokens(9), ["w"]) == {"w": 8}
    clock.now += 2.5
    assert index.match(tokens(9), ["w"]) == {"w": 0}


def test_speculative_entries_are_found_by_later_turns_and_cost_one_entry() -> None:
    clock = Clock()
    index = KvIndex(BS, clock=clock, speculative_ttl=5.0)
    for worker in ("a", "b"):
        index.set_precise(worker, True)
    turn = tokens(40)
    index.record_routed("a", turn)
    assert index.stats()["speculative_entries"] <= 2  # not one per block
    assert index.match(turn, ["a", "b"]) == {"a": 36, "b": 0}  # the same prompt again
    later = [*turn, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]  # the conversation's next turn
    assert index.match(later, ["a", "b"]) == {"a": 40, "b": 0}
    assert index.match([*tokens(20), 9, *tokens(30)], ["a", "b"]) == {"a": 0, "b": 0}
    clock.now += 6
    assert index.match(later, ["a", "b"]) == {"a": 0, "b": 0}
    assert index.stats()["speculative_entries"] == 0


def test_prompt_blocks_serve_match_and_record_alike() -> None:
    index = KvIndex(BS)
    blocks = index.prompt_blocks(tokens(12), kv_namespace("x"))
    index.record_routed("w", blocks)
    assert index.match(blocks, ["w"]) == {"w": 8}
    assert index.match(tokens(13), ["w"], namespace=kv_namespace("x")) == {"w": 12}
    assert index.match(tokens(13), ["w"]) == {"w": 0}


# -- lifecycle and memory ---------------------------------------------------------------------
def test_reset_is_immediate_for_matching_and_cleaned_up_later() -> None:
    index = KvIndex(BS)
    engine = SynthEngine(BS)
    for i in range(200):
        feed(index, "w", engine.cache(tokens(40, start=1000 * i)))
    assert index.stats()["blocks"] == 2000
    index.reset_worker("w")
    assert index.match(tokens(40), ["w"]) == {"w": 0}
    assert index.stats()["blocks"] == 0
    assert index.stats()["distinct_blocks"] == 2000  # stale bits, invisible
    while index.maintain(100):
        pass
    assert index.stats()["distinct_blocks"] == 0
    # The worker goes on under a new slot; the old one is free for reuse.
    feed(index, "w", SynthEngine(BS).cache(tokens(9)))
    assert index.match(tokens(9), ["w"]) == {"w": 8}


def test_removed_worker_is_gone_and_its_slots_reused() -> None:
    index = KvIndex(BS)
    feed(index, "a", SynthEngine(BS).cache(tokens(9)))
    index.record_routed("a", tokens(9, start=50))
    index.remove_worker("a")
    assert index.match(tokens(9), ["a"]) == {"a": 0}
    assert index.workers() == []
    index.maintain()
    assert index.stats()["distinct_blocks"] == 0
    assert index.stats()["approx_entries"] == 0
    assert len(index._approx) == 0
    feed(index, "b", SynthEngine(BS).cache(tokens(9)))
    assert index._workers["b"].slot in (0, 1)


def test_memory_cap_keeps_every_prefix_head() -> None:
    index = KvIndex(BS, max_blocks=1000)
    engines = {w: SynthEngine(BS, salt=i) for i, w in enumerate(["a", "b"])}
    # "a": 100 conversations of 20 blocks; "b": 20 of 5. 2100 blocks for a cap of 1000.
    for i in range(100):
        feed(index, "a", engines["a"].cache(tokens(80, start=10_000 * i)))
    for i in range(20):
        feed(index, "b", engines["b"].cache(tokens(20, start=10_000 * i + 5000)))
    while index.maintain():
        pass
    stats = index.stats()
    assert stats["blocks"] <= 1000
    assert stats["blocks_held"] <= 1000
    assert stats["evicted"] >= 1100
    # The biggest worker lost the deep end of every conversation, none of their heads.
    matched = [index.match(tokens(81, start=10_000 * i), ["a"])["a"] for i in range(100)]
    assert min(matched) == max(matched) > 0
    assert matched[0] < 80
    assert index.match(tokens(21, start=5000), ["b"]) == {"b": 20}
    # Blocks deeper than the limit are not taken in; the limit goes once the index shrinks.
    depth_limit = index.worker_stats("a")["depth_limit"]
    assert depth_limit > 0
    for _ in range(100):
        feed(index, "a", engines["a"].evict(list(engines["a"].blocks)[:10]))
    assert index.worker_stats("a")["depth_limit"] == -1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_match_equals_brute_force(data: st.DataObject) -> None:
    """Random prompts over a tiny vocabulary (many shared prefixes), cached, evicted and cleared
    on three LRU engines; the index must answer exactly what the engines hold."""
    index = KvIndex(BS)
    engines = {w: SynthEngine(BS, capacity=12, salt=i) for i, w in enumerate("abc")}
    prompt = st.lists(st.integers(0, 2), min_size=0, max_size=40)
    for _ in range(data.draw(st.integers(1, 25))):
        worker = data.draw(st.sampled_from("abc"))
        engine = engines[worker]
        action = data.draw(st.sampled_from(["cache", "cache", "cache", "evict", "clear"]))
        if action == "cache":
            events = engine.cache(data.draw(prompt))
        elif action == "evict" and engine.blocks:
            events = engine.evict(
                data.draw(st.lists(st.sampled_from(list(engine.blocks)), unique=True))
            )
        else:
            events = engine.clear() if action == "clear" else []
        feed(index, worker, events)
        if data.draw(st.booleans()):
            index.maintain(data.draw(st.integers(1, 8)))
        query = data.draw(prompt)
        expected = {w: e.cached_prefix(query) for w, e in engines.items()}
        assert index.match(query, "abc") == expected
    index.maintain(10**6)
    assert index.stats()["blocks"] == sum(len(e.blocks) for e in engines.values())
    assert index.stats()["distinct_blocks"] == len(
        set().union(*(e.by_prefix for e in engines.values()))
    )


def test_estimated_bytes_track_the_heap() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = KvIndex(16)
        engine = SynthEngine(16)
        events = [e for i in range(500) for e in engine.cache(tokens(640, start=1000 * i))]
        base = tracemalloc.get_traced_memory()[0]
        feed(index, "w", events)
        for i in range(100):
            index.record_routed("x", tokens(640, start=7_000_000 + 1000 * i))
        used = tracemalloc.get_traced_memory()[0] - base
        del before
    finally:
        tracemalloc.stop()
    estimate = index.estimated_bytes()
    assert 0.7 * used < estimate < 1.3 * used, (estimate, used)


def _chain(held: set[tuple[int, ...]], ids: list[int]) -> int:
    n = 0
    for i in range(max(len(ids) - 1, 0) // BS):
        if tuple(ids[: (i + 1) * BS]) not in held:
            break
        n = (i + 1) * BS
    return n


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_match_with_approximate_entries_equals_brute_force(data: st.DataObject) -> None:
    """Workers going in and out of precise mode, with routed prompts recorded while they are
    not: a worker's answer is its engine's chain, or (when not precise) the longer of that and
    the chain of the prompts routed to it since it was last precise or cleared."""
    index = KvIndex(BS)
    engines = {w: SynthEngine(BS, capacity=10, salt=i) for i, w in enumerate("ab")}
    routed: dict[str, set[tuple[int, ...]]] = {w: set() for w in "ab"}
    precise = dict.fromkeys("ab", False)
    prompt = st.lists(st.integers(0, 2), min_size=0, max_size=20)
    for _ in range(data.draw(st.integers(1, 30))):
        worker = data.draw(st.sampled_from("ab"))
        action = data.draw(st.sampled_from(["cache", "record", "record", "mode", "clear"]))
        if action == "cache":
            feed(index, worker, engines[worker].cache(data.draw(prompt)))
        elif action == "record":
            ids = data.draw(prompt)
            index.record_routed(worker, ids)
            if not precise[worker]:
                routed[worker] |= {tuple(ids[: (i + 1) * BS]) for i in range(len(ids) // BS)}
        elif action == "mode":
            precise[worker] = data.draw(st.booleans())
            index.set_precise(worker, precise[worker])
            if precise[worker]:
                routed[worker].clear()
        else:
            feed(index, worker, engines[worker].clear())
            routed[worker].clear()
        query = data.draw(prompt)
        expected = {}
        for w in "ab":
            chain = engines[w].cached_prefix(query)
            expected[w] = chain if precise[w] else max(chain, _chain(routed[w], query))
        assert index.match(query, "ab") == expected


def test_chain_keys_of_few_and_many_blocks_agree_with_prompt_keys() -> None:
    ids = [random.Random(3).randrange(200_000) for _ in range(16 * 12)]
    keys = prompt_keys(ids, 16, 12, seed=99)
    blocks = [ids[i * 16 : (i + 1) * 16] for i in range(12)]
    for split in range(12):
        for count in (1, 3, 5, 12 - split):  # under and over the numpy threshold
            if split + count > 12:
                continue
            parent = keys[split - 1] if split else 99
            got = chain_keys(parent, split, blocks[split : split + count], 16)
            assert got == keys[split : split + count]


def test_orphans_are_counted_and_matching_stays_exact_with_them(monkeypatch) -> None:
    index = KvIndex(BS)
    engine = SynthEngine(BS)
    prompt = tokens(25)  # 6 blocks
    feed(index, "w", engine.cache(prompt))
    walks = []
    original = KvIndex._walk
    monkeypatch.setattr(KvIndex, "_walk", lambda *a: walks.append(1) or original(*a))
    assert index.match(prompt, ["w"]) == {"w": 24}
    assert walks == []  # no orphans: bisection
    # The engine drops the third block, keeps the ones after it: they are orphans.
    third = engine.by_prefix[tuple(prompt[:12])]
    feed(index, "w", engine.evict([third]))
    assert index.worker_stats("w")["orphans"] == 1  # the fourth block, whose parent went
    assert index.match(prompt, ["w"]) == {"w": 8}
    assert walks == [1]  # a linear walk: bisecting could jump over the hole
    # The block comes back (same engine hash): its descendants are a chain again.
    feed(index, "w", engine.cache(prompt))
    assert index.worker_stats("w")["orphans"] == 0
    assert index.match(prompt, ["w"]) == {"w": 24}
    assert walks == [1]
    # Orphans leave with their own removal too.
    feed(index, "w", engine.evict([third]))
    fourth = engine.by_prefix[tuple(prompt[:16])]
    feed(index, "w", engine.evict([fourth]))
    assert index.worker_stats("w")["orphans"] == 1  # the fifth now
    rest = [engine.by_prefix[tuple(prompt[: 4 * i])] for i in (5, 6)]
    feed(index, "w", engine.evict(rest))
    assert index.worker_stats("w")["orphans"] == 0
    assert not index._workers["w"].orphan_children
