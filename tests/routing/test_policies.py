"""Routing policies on real Worker objects with set loads (no engines needed: policies only read
ids and loads)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence

import pytest
from tests.routing.kvsynth import SynthEngine

from herdsman.engines import ModelInfo
from herdsman.routing import RoutingRequest, Worker, WorkerLoad, make_policy
from herdsman.routing.kv_index import KvIndex
from herdsman.routing.policies import CacheAwarePolicy


def workers(n: int) -> list[Worker]:
    return [
        Worker(url=f"grpc://10.0.0.{i}:50051", engine=None, model=ModelInfo(), model_name="m")  # type: ignore[arg-type]
        for i in range(n)
    ]


def set_load(worker: Worker, running: int, waiting: int = 0) -> None:
    worker.update_load(
        WorkerLoad(running=running, waiting=waiting, updated_at=time.monotonic(), source="events")
    )


def req(ids: Sequence[int] = (1, 2, 3), key: str | None = None) -> RoutingRequest:
    return RoutingRequest(list(ids), key)


def test_round_robin_cycles() -> None:
    pool = workers(3)
    policy = make_policy("round_robin")
    assert [policy.select(pool, req()) for _ in range(6)] == pool * 2
    assert policy.select([], req()) is None


def test_random_covers_every_worker() -> None:
    pool = workers(4)
    policy = make_policy("random")
    assert {policy.select(pool, req()).id for _ in range(200)} == {w.id for w in pool}  # type: ignore[union-attr]


def test_least_load_picks_the_least_loaded_and_spreads_ties() -> None:
    pool = workers(3)
    for worker, load in zip(pool, (5, 1, 3), strict=True):
        set_load(worker, load)
    policy = make_policy("least_load")
    assert policy.select(pool, req()) is pool[1]
    for worker in pool:
        set_load(worker, 0)
    # Equal loads: the requests rotate instead of all going to the first worker.
    picked = Counter(policy.select(pool, req()).id for _ in range(30))  # type: ignore[union-attr]
    assert len(picked) == 3


def test_load_counts_what_this_process_sent_since_the_engines_record() -> None:
    pool = workers(2)
    set_load(pool[0], 2)
    set_load(pool[1], 2)
    for _ in range(3):
        pool[0].routed()
    assert pool[0].load_score() == 5 and pool[1].load_score() == 2
    assert make_policy("least_load").select(pool, req()) is pool[1]
    set_load(pool[0], 2)  # a new record includes what was sent: the local count restarts
    assert pool[0].load_score() == 2


def test_stale_or_missing_engine_load_falls_back_to_in_flight() -> None:
    pool = workers(2)
    pool[0].in_flight, pool[1].in_flight = 7, 1
    assert make_policy("least_load").select(pool, req()) is pool[1]


def test_power_of_two_never_picks_the_most_loaded_of_two() -> None:
    pool = workers(2)
    set_load(pool[0], 10)
    set_load(pool[1], 0)
    policy = make_policy("power_of_two")
    assert all(policy.select(pool, req()) is pool[1] for _ in range(20))


def test_power_of_two_balances_a_stream_of_requests() -> None:
    pool = workers(8)
    policy = make_policy("power_of_two")
    random.seed(0)
    for _ in range(800):
        chosen = policy.select(pool, req())
        assert chosen is not None
        chosen.in_flight += 1  # requests that never finish: load only grows
    counts = [w.in_flight for w in pool]
    assert max(counts) / min(counts) <= 1.5, counts


def test_consistent_hash_is_sticky_and_the_same_in_every_process() -> None:
    pool = workers(5)
    one, two = make_policy("consistent_hash"), make_policy("consistent_hash")
    for key in ("tenant-a", "tenant-b", "user-17"):
        first = one.select(pool, req(key=key))
        assert all(one.select(pool, req(key=key)) is first for _ in range(5))
        # Another process (a fresh policy) with workers listed in another order agrees.
        assert two.select(list(reversed(pool)), req(key=key)) is first


def test_consistent_hash_moves_only_the_keys_of_a_removed_worker() -> None:
    pool = workers(5)
    policy = make_policy("consistent_hash")
    keys = [f"k{i}" for i in range(500)]
    before = {k: policy.select(pool, req(key=k)) for k in keys}
    gone = pool[2]
    after = {k: policy.select([w for w in pool if w is not gone], req(key=k)) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved and all(before[k] is gone for k in moved)
    # Spread: no worker owns more than twice its share.
    counts = Counter(w.id for w in before.values())  # type: ignore[union-attr]
    assert max(counts.values()) <= 2 * len(keys) / len(pool)


def test_consistent_hash_without_a_key_goes_round_robin() -> None:
    pool = workers(3)
    policy = make_policy("consistent_hash")
    assert [policy.select(pool, req()) for _ in range(3)] == pool


def test_prefix_hash_keys_on_the_leading_tokens() -> None:
    pool = workers(4)
    policy = make_policy("prefix_hash")
    system = list(range(1000, 1300))  # a 300-token shared start
    first = policy.select(pool, req([*system, 1, 2, 3]))
    assert policy.select(pool, req([*system, 9, 9, 9, 9])) is first
    starts = {policy.select(pool, req([i] * 300)).id for i in range(40)}  # type: ignore[union-attr]
    assert len(starts) == 4


def fleet_index(pool: Sequence[Worker], block_size: int = 16) -> tuple[KvIndex, list[SynthEngine]]:
    """A real prefix index fed by the KV events of one synthetic engine cache per worker."""
    index = KvIndex(block_size)
    engines = [SynthEngine(block_size, salt=i) for i in range(len(pool))]
    for worker in pool:
        index.set_precise(worker.id, True)
    return index, engines


def run_on(index: KvIndex, engine: SynthEngine, worker: Worker, ids: Sequence[int]) -> None:
    """The worker's engine ran ``ids``: its blocks are cached and announced."""
    for event in engine.cache(ids):
        index.apply_event(worker.id, event)


def test_cache_aware_follows_the_longest_cached_prefix() -> None:
    pool = workers(3)
    index, engines = fleet_index(pool)
    prompt = list(range(400))
    run_on(index, engines[0], pool[0], prompt[:40])  # two blocks
    run_on(index, engines[2], pool[2], prompt[:330])  # twenty
    policy = CacheAwarePolicy(index)
    request = req(prompt)
    assert policy.select(pool, request) is pool[2]
    # What the worker has to compute: counted in its prefill backlog until the first token.
    assert request.prefill_tokens == 400 - 320


def test_cache_aware_bounds_the_imbalance() -> None:
    pool = workers(3)
    index, engines = fleet_index(pool)
    prompt = list(range(400))
    run_on(index, engines[2], pool[2], prompt)
    policy = CacheAwarePolicy(index, balance_abs=4, balance_rel=1.25)
    set_load(pool[0], 2)
    set_load(pool[1], 2)
    set_load(pool[2], 6)  # within 4 of the least loaded: still eligible for its cache
    assert policy.select(pool, req(prompt)) is pool[2]
    set_load(pool[2], 7)  # beyond: the cache does not pile more onto it
    assert policy.select(pool, req(prompt)) in (pool[0], pool[1])


def test_cache_aware_weighs_a_cached_prefix_against_the_prefill_backlog() -> None:
    pool = workers(2)
    index, engines = fleet_index(pool)
    prompt = list(range(1000))
    run_on(index, engines[0], pool[0], prompt[:800])
    policy = CacheAwarePolicy(index, prefill_weight=1.0)
    busy = WorkerLoad(running=1, waiting=1, updated_at=time.monotonic(), source="events")
    busy.waiting_uncached_tokens = 500  # less than the 800 cached tokens save: stay
    pool[0].update_load(busy)
    set_load(pool[1], 1, 1)
    assert policy.select(pool, req(prompt)) is pool[0]
    busy.waiting_uncached_tokens = 2000  # longer than computing the whole prompt elsewhere
    pool[0].update_load(busy)
    assert policy.select(pool, req(prompt)) is pool[1]


def test_cache_aware_sends_uncached_prompts_to_the_least_loaded() -> None:
    pool = workers(3)
    index, _ = fleet_index(pool)
    set_load(pool[0], 3)
    set_load(pool[1], 0)
    set_load(pool[2], 3)
    assert CacheAwarePolicy(index).select(pool, req(range(50))) is pool[1]


def test_cache_aware_remembers_where_it_sent_prompts_of_workers_without_events() -> None:
    pool = workers(4)
    index = KvIndex(16)  # no worker publishes events: the index is approximate
    policy = CacheAwarePolicy(index, prefill_weight=1.0)  # new prompts spread by their prefill
    conversations = [list(range(1000 * c, 1000 * c + 200)) for c in range(8)]
    first = []
    for c in conversations:
        request = req(c)
        first.append(policy.select(pool, request))
        first[-1].prefilling += request.prefill_tokens  # type: ignore[union-attr]
    for worker in pool:
        worker.prefilling = 0  # every prompt has been computed
    again = [policy.select(pool, req([*c, 7, 7, 7])) for c in conversations]
    assert again == first
    assert len({w.id for w in first if w is not None}) == 4  # new prompts spread


def test_cache_aware_ties_are_the_same_in_every_process() -> None:
    # Two processes: their own Worker objects (same ids), listed in different orders.
    prompts = [list(range(i, i + 64)) for i in range(50)]
    chosen = []
    for order in (1, -1):
        pool = workers(4)
        policy = CacheAwarePolicy(fleet_index(pool)[0])
        picks = []
        for p in prompts:
            for worker in pool:
                set_load(worker, 1)  # the same engine records in both processes
            picks.append(policy.select(pool[::order], req(p)).id)  # type: ignore[union-attr]
        chosen.append(picks)
    assert chosen[0] == chosen[1]
    assert len(set(chosen[0])) == 4  # and they still spread


@pytest.mark.parametrize("name", ["nope", ""])
def test_unknown_policy_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="choose from"):
        make_policy(name)
