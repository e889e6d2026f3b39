"""In-process checks of engine-sim's building blocks (no server)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from smg_grpc_proto.generated import vllm_engine_pb2
from tokenizers import Tokenizer

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.cli import add_arguments
from herdsman.sim.corpus import CORPUS
from herdsman.sim.engine import SimEngine
from herdsman.sim.logprobs import fill_output_logprobs
from herdsman.sim.model_card import DEFAULT_MAX_CONTEXT, load_model_card
from herdsman.sim.options import SimOptions
from herdsman.sim.prefix_cache import DEFAULT_BLOCK_SIZE as BLOCK_SIZE
from herdsman.sim.prefix_cache import PrefixCache
from herdsman.sim.sim_request import GenerationParams, RequestState, SimRequest
from herdsman.sim.text_source import TextSource

from .simproc import LLAMA3, QWEN3


def _tokenizer_only_dir(source: Path, target: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (target / name).symlink_to(source / name)
    return target


def test_model_card_without_config_files(tmp_path: Path, qwen_tokenizer: Tokenizer) -> None:
    model_dir = _tokenizer_only_dir(QWEN3, tmp_path)
    card = load_model_card(model_dir, qwen_tokenizer)
    # EOS comes from tokenizer_config.json's eos_token looked up in the vocabulary.
    assert card.eos_token_ids == (qwen_tokenizer.token_to_id("<|im_end|>"),)
    assert card.pad_token_id == qwen_tokenizer.token_to_id("<|endoftext|>")
    assert card.bos_token_id is None
    assert card.max_context_length == 131072  # tokenizer_config.json's model_max_length
    assert card.vocab_size == qwen_tokenizer.get_vocab_size(with_added_tokens=True)
    assert (card.architectures, card.model_type) == ((), "")
    assert card.served_model_name == tmp_path.name


def test_model_card_ignores_sentinel_context_length(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_file(str(LLAMA3 / "tokenizer.json"))
    card = load_model_card(_tokenizer_only_dir(LLAMA3, tmp_path), tokenizer)
    assert card.max_context_length == DEFAULT_MAX_CONTEXT
    assert card.eos_token_ids == (tokenizer.token_to_id("<|eot_id|>"),)
    assert card.bos_token_id == tokenizer.token_to_id("<|begin_of_text|>")


def test_model_card_prefers_generation_config(tmp_path: Path, qwen_tokenizer: Tokenizer) -> None:
    model_dir = _tokenizer_only_dir(QWEN3, tmp_path)
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": 1, "vocab_size": 7}))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 4]}))
    card = load_model_card(model_dir, qwen_tokenizer, served_model_name="x", max_model_len=99)
    assert card.eos_token_ids == (3, 4)
    assert (card.vocab_size, card.served_model_name, card.max_context_length) == (7, "x", 99)


def test_prefix_cache_hits_whole_blocks_and_evicts_lru() -> None:
    cache = PrefixCache(capacity_blocks=4)
    prompt = list(range(50))
    assert cache.lookup(prompt) == 0
    cache.insert(prompt)  # 3 full blocks
    assert cache.lookup(prompt) == 3 * BLOCK_SIZE
    assert cache.lookup(list(range(48))) == 2 * BLOCK_SIZE  # the last token is recomputed
    assert cache.lookup([99, *prompt[1:]]) == 0  # a changed first block misses everything
    # Two more blocks push out the least recently used one: the prompt's third block, which
    # the shorter lookup above did not touch.
    cache.insert(list(range(100, 132)))
    assert len(cache) == 4
    assert cache.lookup(prompt) == 2 * BLOCK_SIZE
    assert 0 < cache.hit_rate < 1


def test_text_source_starts_at_sentences(qwen_tokenizer: Tokenizer) -> None:
    source = TextSource(qwen_tokenizer)
    assert len(source.sentence_starts) > 20
    for key in range(5):
        start = source.start_for(key * 7919)
        text = qwen_tokenizer.decode(source.ids[start : start + 8])
        assert text.strip()[0].isupper()
        assert text in CORPUS


def test_logprobs_form_a_distribution() -> None:
    message = vllm_engine_pb2.OutputLogProbs()
    fill_output_logprobs(
        message, key=42, first_position=0, token_ids=[5, 6, 7], top_n=5, vocab_size=1000
    )
    assert list(message.token_ids) == [5, 6, 7]
    for value, top in zip(message.token_logprobs, message.top_logprobs, strict=True):
        assert value < 0
        assert sum(math.exp(v) for v in top.values) <= 1.0 + 1e-6
        assert len(set(top.token_ids)) == 5


def test_cli_defaults_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = SimOptions.from_namespace(parser.parse_args(["--model-path", str(QWEN3)]))
    assert (options.backend, options.host, options.port) == ("vllm", "127.0.0.1", 50051)
    assert (options.ttft_base_ms, options.prefill_ms_per_1k) == (5.0, 20.0)
    assert (options.itl_base_ms, options.itl_per_running_ms) == (10.0, 0.02)
    assert options.cache_blocks == 65536
    assert not (options.hang or options.reject_new)


def _scheduler(tokenizer: Tokenizer, **overrides: Any) -> SimEngine:
    settings: dict[str, Any] = {"ttft_base_ms": 5.0, "prefill_ms_per_1k": 100.0, **overrides}
    options = SimOptions(model_path=QWEN3, **settings)
    card = load_model_card(QWEN3, tokenizer)
    return SimEngine(options, card, TextSource(tokenizer), AbortLog(None))


def _params(request_id: str, prompt: list[int]) -> GenerationParams:
    return GenerationParams(
        request_id=request_id,
        prompt_ids=prompt,
        max_tokens=4,
        min_tokens=0,
        stop_token_ids=frozenset(),
        ignore_eos=False,
        n=1,
        stream=True,
        logprobs=None,
        seed=None,
    )


@pytest.mark.parametrize("serial", [False, True])
def test_prefill_time_counts_uncached_tokens(qwen_tokenizer: Tokenizer, serial: bool) -> None:
    engine = _scheduler(qwen_tokenizer, serial_prefill=serial)
    first = [2000 + i for i in range(1000)]
    engine.cache.insert(first)  # as if an earlier request had prefilled it
    warm = engine.submit(_params("warm", first))
    cold = engine.submit(_params("cold", [9000 + i for i in range(1000)]))
    load = engine.load()
    assert (load.running, load.waiting) == (0, 2)
    assert load.waiting_uncached_tokens == 8 + 1000  # 992 of the first prompt are cached
    assert load.prefill_pending_tokens == 2000

    engine._admit(100.0)
    # 5 ms base plus 0.1 ms per uncached token; serially, the cold one waits for the warm one.
    assert warm.cached_tokens == 992
    assert warm.ready_at == pytest.approx(100.0 + 0.005 + 0.0008)
    cold_start = 100.0 + 0.0008 if serial else 100.0
    assert cold.ready_at == pytest.approx(cold_start + 0.1 + 0.005)
    load = engine.load()
    assert (load.running, load.waiting, load.waiting_uncached_tokens) == (2, 0, 0)
    assert load.used_tokens == 2000


def _recount(engine: SimEngine) -> tuple[int, int, int]:
    """(waiting uncached, prefill pending, used) tokens, counted the slow way."""
    uncached = prefill = used = 0
    for requests in engine._inflight.values():
        for request in requests:
            if request.state is RequestState.PENDING:
                uncached += request.uncached_estimate
                prefill += request.prompt_len
            elif not request.done:
                used += request.prompt_len + request.generated_tokens
                if request.state is not RequestState.RUNNING:
                    prefill += request.prompt_len
    return uncached, prefill, used


async def test_load_counters_match_a_recount(qwen_tokenizer: Tokenizer) -> None:
    engine = _scheduler(
        qwen_tokenizer, ttft_base_ms=0.0, prefill_ms_per_1k=0.0, itl_base_ms=0.0,
        itl_per_running_ms=0.0, max_num_seqs=4, cache_blocks=64,
    )  # fmt: skip
    draws = random.Random(3)
    engine.start()
    live: list[SimRequest] = []
    try:
        for step in range(400):
            if draws.random() < 0.3:
                prompt = [5000 + draws.randrange(40) for _ in range(draws.randrange(1, 80))]
                params = dataclasses.replace(
                    _params(f"r{step}", prompt), max_tokens=draws.randrange(1, 30),
                    n=draws.choice((1, 1, 2)),
                )  # fmt: skip
                live.append(engine.submit(params))
            if live and draws.random() < 0.1:
                victim = live.pop(draws.randrange(len(live)))
                engine.release(victim, cancelled=True)
            for request in [r for r in live if r.done]:
                live.remove(request)
                engine.release(request, cancelled=False)
            await asyncio.sleep(0)  # one scheduler step
            load = engine.load()
            assert (
                load.waiting_uncached_tokens,
                load.prefill_pending_tokens,
                load.used_tokens,
            ) == _recount(engine)
    finally:
        await engine.stop()
    assert engine.load().used_tokens >= 0
