"""The segment store the gateway's processes share: hits across processes, eviction, cleanup."""

from __future__ import annotations

import multiprocessing
import os
import random
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import QWEN3

from herdsman.serve.shared_files import make_store_directory, remove_store_directory
from herdsman.tokenizer import load_model_tokenizer
from herdsman.tokenizer.cache import TokenizationCache
from herdsman.tokenizer.shared_store import SharedSegmentStore

REFERENCE = load_model_tokenizer(QWEN3, fast=False)
SPLITTING = REFERENCE.enable_cache(0, 1 << 20)._splitting  # type: ignore[union-attr]
WORDS = ["alpha", "beta", "gamma", " delta", "\n", "日本", "🙂", "'s", "42", "  "]


class CountingEncoder:
    """The real encoder, counting the tokens it had to produce (what the cache did not save)."""

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = REFERENCE._raw_encode(text, add_special_tokens)
        self.tokens += len(ids)
        return ids


def chat(seed: int, turns: int) -> list[str]:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": " ".join(rng.choices(WORDS, k=60))}]
    prompts = []
    assert REFERENCE.chat_template is not None
    for _ in range(turns):
        messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=30))})
        prompts.append(REFERENCE.chat_template.render(messages))
        messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=40))})
    return prompts


def uncached(text: str) -> list[int]:
    return REFERENCE._raw_encode(text, False)


def test_a_turn_on_another_process_finds_the_earlier_segments(tmp_path: Path) -> None:
    store = SharedSegmentStore(tmp_path, 16 << 20)
    first, second = CountingEncoder(), CountingEncoder()
    # Two caches over one store stand for two processes (LMDB maps an env once per process).
    a = TokenizationCache(first, SPLITTING, 0, 1 << 20, store)
    b = TokenizationCache(second, SPLITTING, 0, 1 << 20, store)
    turn1, turn2 = chat(1, 2)
    assert a.encode(turn1, False) == uncached(turn1)
    assert b.encode(turn2, False) == uncached(turn2)
    new_text = turn2[len(turn1) :]
    assert second.tokens <= len(uncached(new_text)) + 2  # only the new turn was encoded
    assert store.hits > 0


def test_without_the_store_the_other_process_encodes_everything_again() -> None:
    first, second = CountingEncoder(), CountingEncoder()
    a = TokenizationCache(first, SPLITTING, 0, 1 << 20)
    b = TokenizationCache(second, SPLITTING, 0, 1 << 20)
    turn1, turn2 = chat(1, 2)
    a.encode(turn1, False)
    b.encode(turn2, False)
    cold = CountingEncoder()
    TokenizationCache(cold, SPLITTING, 0, 1 << 20).encode(turn2, False)
    assert second.tokens == cold.tokens


def test_generations_rotate_and_recently_used_segments_survive(tmp_path: Path) -> None:
    store = SharedSegmentStore(tmp_path, 1 << 20)  # generations of ~400 KB
    hot = ("hot segment", array("I", [1, 2, 3]))
    store.put_many([hot])
    for round_ in range(200):
        filler = [(f"cold {round_} {i}", array("I", range(200))) for i in range(10)]
        store.put_many(filler)
        assert store.get_many([hot[0]]) == [hot[1]]  # a hit in the old generation moves forward
    assert store.rotations >= 2
    assert store.get_many(["cold 0 0"]) == [None]  # long gone
    assert store.size <= store.budget
    assert store.write_failures == 0


def test_entries_larger_than_a_page_are_counted_as_pages(tmp_path: Path) -> None:
    store = SharedSegmentStore(tmp_path, 1 << 20)
    for i in range(400):  # 400 x 8 KB values: more than the map; rotation keeps it in bounds
        store.put_many([(f"long {i}", array("I", range(2000)))])
    assert store.write_failures == 0
    assert store.get_many(["long 399"]) == [array("I", range(2000))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=30),
    budget=st.sampled_from([64 << 10, 16 << 20]),
)
def test_shared_cached_equals_uncached(order: list[tuple[int, int]], budget: int) -> None:
    """Turns of six chats land on three "processes" in random order, with tiny and roomy stores."""
    directory = make_store_directory()
    try:
        store = SharedSegmentStore(directory, budget)
        caches = [TokenizationCache(uncached_pair, SPLITTING, 0, 4096, store) for _ in range(3)]
        chats = {seed: chat(seed, 4) for seed, _ in order}
        progress: dict[int, int] = {}
        for seed, process in order:
            turn = progress.get(seed, 0) % 4
            progress[seed] = turn + 1
            text = chats[seed][turn]
            assert caches[process].encode(text, False) == uncached(text)
        store.close()
    finally:
        remove_store_directory(directory)


def uncached_pair(text: str, add_special_tokens: bool) -> list[int]:
    return REFERENCE._raw_encode(text, add_special_tokens)


def _encode_in_child(directory: str, texts: list[str], out: multiprocessing.Queue) -> None:
    encoder = CountingEncoder()
    cache = TokenizationCache(
        encoder, SPLITTING, 0, 1 << 20, SharedSegmentStore(directory, 16 << 20)
    )
    ids = [cache.encode(text, False) for text in texts]
    out.put((ids, encoder.tokens))


def test_real_processes_share_one_store() -> None:
    directory = make_store_directory()
    try:
        turns = chat(7, 3)
        spawn = multiprocessing.get_context("spawn")
        results = []
        for texts in (turns[:1], turns[1:]):  # turn 1 in one process, turns 2-3 in another
            queue = spawn.Queue()
            child = spawn.Process(target=_encode_in_child, args=(directory, texts, queue))
            child.start()
            results.append(queue.get(timeout=60))
            child.join(30)
            assert child.exitcode == 0
        (first_ids, _), (later_ids, later_encoded) = results
        assert first_ids == [uncached(turns[0])]
        assert later_ids == [uncached(t) for t in turns[1:]]
        fresh = len(uncached(turns[2])) - len(uncached(turns[0]))
        assert later_encoded <= fresh + 4  # the first turn's segments came from the store
    finally:
        remove_store_directory(directory)


def test_directories_of_dead_gateways_are_swept() -> None:
    probe = make_store_directory()
    parent = Path(probe).parent
    remove_store_directory(probe)
    dead = spawn_and_reap()
    stale = parent / f"herdsman-tokcache-{dead}-x"
    stale.mkdir()
    live = Path(make_store_directory())
    try:
        assert not stale.exists()
        assert live.exists() and str(os.getpid()) in live.name
    finally:
        remove_store_directory(str(live))


def spawn_and_reap() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _ours() -> set[Path]:
    parent = Path("/dev/shm")
    return set(parent.glob(f"herdsman-tokcache-{os.getpid()}-*")) if parent.exists() else set()


@pytest.fixture(autouse=True)
def _no_leftovers():
    before = _ours()
    yield
    assert _ours() <= before
