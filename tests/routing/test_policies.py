"""Routing policies on real Worker objects with set loads (no engines needed: policies only read
ids and loads)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence

import pytest

from herdsman.engines import ModelInfo
from herdsman.routing import RoutingRequest, Worker, WorkerLoad, make_policy
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


class FakeIndex:
    """Cached prefix lengths set by the test; records what was routed."""

    def __init__(self, matches: dict[str, int] | None = None) -> None:
        self.matches = matches or {}
        self.routed: list[str] = []

    def match(self, input_ids: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        return {w: self.matches.get(w, 0) for w in worker_ids}

    def record_routed(self, worker_id: str, input_ids: Sequence[int]) -> None:
        self.routed.append(worker_id)


def test_cache_aware_follows_the_longest_cached_prefix() -> None:
    pool = workers(3)
    index = FakeIndex({pool[0].id: 32, pool[2].id: 320})
    policy = CacheAwarePolicy(index)
    assert policy.select(pool, req(range(400))) is pool[2]
    assert index.routed == [pool[2].id]


def test_cache_aware_bounds_the_imbalance() -> None:
    pool = workers(3)
    index = FakeIndex({pool[2].id: 320})
    policy = CacheAwarePolicy(index, balance_abs=4, balance_rel=1.25)
    set_load(pool[0], 2)
    set_load(pool[1], 2)
    set_load(pool[2], 6)  # within 4 of the least loaded: still eligible for its cache
    assert policy.select(pool, req(range(400))) is pool[2]
    set_load(pool[2], 7)  # beyond: the cache does not pile more onto it
    assert policy.select(pool, req(range(400))) in (pool[0], pool[1])


def test_cache_aware_sends_uncached_prompts_to_the_least_loaded() -> None:
    pool = workers(3)
    set_load(pool[0], 3)
    set_load(pool[1], 0)
    set_load(pool[2], 3)
    assert CacheAwarePolicy(FakeIndex()).select(pool, req(range(50))) is pool[1]


def test_cache_aware_ties_are_the_same_in_every_process() -> None:
    pool = workers(4)
    for worker in pool:
        set_load(worker, 1)
    prompts = [list(range(i, i + 64)) for i in range(50)]
    one = [CacheAwarePolicy(FakeIndex()).select(pool, req(p)) for p in prompts]
    two = [CacheAwarePolicy(FakeIndex()).select(list(reversed(pool)), req(p)) for p in prompts]
    assert one == two
    assert len({w.id for w in one if w is not None}) == 4  # and they still spread


@pytest.mark.parametrize("name", ["nope", ""])
def test_unknown_policy_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="choose from"):
        make_policy(name)
