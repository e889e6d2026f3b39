"""Generate semantics of engine-sim over real gRPC, for both wire protocols."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tokenizers import Tokenizer

from herdsman.sim.corpus import CORPUS

from .simproc import SimFactory, SimProcess, generate_request, split_responses

QWEN_EOS = (151645, 151643)


def _prompt(tokenizer: Tokenizer, text: str = "Tell me about gateways.") -> list[int]:
    return tokenizer.encode(text).ids


def _run(sim: SimProcess, request: Any) -> list[Any]:
    return list(sim.stub().Generate(request, timeout=20))


def _single(sim: SimProcess, request: Any) -> tuple[list[Any], Any]:
    chunks, completes = split_responses(_run(sim, request))
    assert len(completes) == 1
    return chunks, completes[0]


def test_stream_decodes_to_real_text(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    prompt = _prompt(qwen_tokenizer)
    responses = _run(
        fast_sim, generate_request(fast_sim.backend, "real-text", prompt, max_tokens=40)
    )
    chunks, completes = split_responses(responses)

    assert responses[-1].WhichOneof("response") == "complete"
    streamed = [t for c in chunks for t in c.token_ids]
    assert streamed == list(completes[0].output_ids)
    assert len(streamed) == 40
    text = qwen_tokenizer.decode(streamed)
    assert len(text.split()) >= 15
    # Real prose from the corpus (twice: a walk may wrap around its end).
    assert text in CORPUS * 2
    assert [c.completion_tokens for c in chunks] == sorted({c.completion_tokens for c in chunks})
    assert chunks[-1].completion_tokens == 40
    assert all(c.prompt_tokens == len(prompt) for c in chunks)
    complete = completes[0]
    assert (complete.finish_reason, complete.prompt_tokens, complete.completion_tokens) == (
        "length",
        len(prompt),
        40,
    )
    if fast_sim.backend == "sglang":
        assert {r.request_id for r in responses} == {"real-text"}


def test_different_prompts_give_different_text(
    fast_sim: SimProcess, qwen_tokenizer: Tokenizer
) -> None:
    outputs = set()
    for i, text in enumerate(("Hello there.", "What is a gateway?", "Write a poem.")):
        request = generate_request(
            fast_sim.backend, f"diff-{i}", _prompt(qwen_tokenizer, text), max_tokens=12
        )
        outputs.add(tuple(_single(fast_sim, request)[1].output_ids))
    assert len(outputs) == 3


@pytest.mark.parametrize("max_tokens", [1, 7])
def test_max_tokens_honoured(
    fast_sim: SimProcess, qwen_tokenizer: Tokenizer, max_tokens: int
) -> None:
    request = generate_request(
        fast_sim.backend, "max", _prompt(qwen_tokenizer), max_tokens=max_tokens
    )
    chunks, complete = _single(fast_sim, request)
    assert sum(len(c.token_ids) for c in chunks) == max_tokens
    assert len(complete.output_ids) == max_tokens
    assert complete.finish_reason == "length"


def test_default_max_tokens(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    request = generate_request(fast_sim.backend, "default-max", _prompt(qwen_tokenizer))
    _, complete = _single(fast_sim, request)
    assert complete.completion_tokens == 256


def test_stop_token_id_ends_with_stop(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    prompt = _prompt(qwen_tokenizer, "Stop somewhere, please.")
    backend = fast_sim.backend
    _, free = _single(fast_sim, generate_request(backend, "free", prompt, max_tokens=60))
    free_ids = list(free.output_ids)
    stop_id = free_ids[10]
    first = free_ids.index(stop_id)

    request = generate_request(backend, "stopped", prompt, max_tokens=60, stop_token_ids=[stop_id])
    chunks, complete = _single(fast_sim, request)
    assert complete.finish_reason == "stop"
    assert complete.WhichOneof("matched_stop") == "matched_token_id"
    assert complete.matched_token_id == stop_id
    assert list(complete.output_ids) == free_ids[: first + 1]
    assert [t for c in chunks for t in c.token_ids] == free_ids[: first + 1]


def test_min_tokens_defers_stop(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    prompt = _prompt(qwen_tokenizer, "Stop somewhere, please.")
    backend = fast_sim.backend
    _, free = _single(fast_sim, generate_request(backend, "free2", prompt, max_tokens=200))
    free_ids = list(free.output_ids)
    repeated = next(t for t in free_ids if free_ids.count(t) >= 2)
    first = free_ids.index(repeated)
    second = free_ids.index(repeated, first + 1)

    request = generate_request(
        backend,
        "min",
        prompt,
        max_tokens=200,
        min_tokens=first + 2,
        stop_token_ids=[repeated],
    )
    _, complete = _single(fast_sim, request)
    assert complete.finish_reason == "stop"
    assert list(complete.output_ids) == free_ids[: second + 1]


def test_n2_streams_two_indices(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    request = generate_request(fast_sim.backend, "n2", _prompt(qwen_tokenizer), max_tokens=20, n=2)
    chunks, completes = split_responses(_run(fast_sim, request))
    assert sorted(c.index for c in completes) == [0, 1]
    assert {c.index for c in chunks} == {0, 1}
    by_index = {c.index: list(c.output_ids) for c in completes}
    for index, output in by_index.items():
        assert [t for c in chunks if c.index == index for t in c.token_ids] == output
        assert len(output) == 20
    assert by_index[0] != by_index[1]


def test_non_stream_sends_only_complete(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    request = generate_request(
        fast_sim.backend, "whole", _prompt(qwen_tokenizer), max_tokens=25, stream=False, n=2
    )
    responses = _run(fast_sim, request)
    assert all(r.WhichOneof("response") == "complete" for r in responses)
    assert sorted(r.complete.index for r in responses) == [0, 1]
    for response in responses:
        assert len(response.complete.output_ids) == 25
        assert qwen_tokenizer.decode(list(response.complete.output_ids)) in CORPUS * 2


def test_logprobs_are_plausible_and_deterministic(
    fast_sim: SimProcess, qwen_tokenizer: Tokenizer
) -> None:
    def logprobs_of(request_id: str) -> list[tuple[Any, ...]]:
        request = generate_request(
            fast_sim.backend, request_id, _prompt(qwen_tokenizer), max_tokens=10, logprobs=3
        )
        chunks, complete = _single(fast_sim, request)
        rows = []
        for chunk in chunks:
            lp = chunk.output_logprobs
            assert list(lp.token_ids) == list(chunk.token_ids)
            for value, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
                assert value < 0
                assert len(top.values) == 3
                assert list(top.values) == sorted(top.values, reverse=True)
                assert value in list(top.values)
                rows.append((round(value, 6), tuple(top.token_ids)))
        assert list(complete.output_logprobs.token_ids) == list(complete.output_ids)
        return rows

    first = logprobs_of("lp-a")
    assert len(first) == 10
    assert first == logprobs_of("lp-b")


def test_no_logprobs_unless_asked(fast_sim: SimProcess, qwen_tokenizer: Tokenizer) -> None:
    request = generate_request(fast_sim.backend, "nolp", _prompt(qwen_tokenizer), max_tokens=5)
    chunks, complete = _single(fast_sim, request)
    assert not any(c.HasField("output_logprobs") for c in chunks)
    assert not complete.HasField("output_logprobs")


def test_overlong_prompt_is_invalid(fast_sim: SimProcess) -> None:
    request = generate_request(fast_sim.backend, "long", [100] * 40960, max_tokens=5)
    with pytest.raises(grpc.RpcError) as info:
        _run(fast_sim, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_eos_after(sim_factory: SimFactory, qwen_tokenizer: Tokenizer) -> None:
    prompt = _prompt(qwen_tokenizer)
    for backend in ("vllm", "sglang"):
        sim = sim_factory("--eos-after", "5", "--itl-base-ms", "0", backend=backend)
        _, complete = _single(sim, generate_request(backend, "eos", prompt, max_tokens=50))
        assert complete.finish_reason == "stop"
        assert list(complete.output_ids)[-1] == QWEN_EOS[0]
        assert len(complete.output_ids) == 6
        # SGLang reports the EOS id as the matched token; vLLM reports only explicit stop ids.
        if backend == "sglang":
            assert complete.matched_token_id == QWEN_EOS[0]
        else:
            assert complete.WhichOneof("matched_stop") is None

        request = generate_request(backend, "eos-min", prompt, max_tokens=50, min_tokens=9)
        assert len(_single(sim, request)[1].output_ids) == 10

        request = generate_request(backend, "eos-ign", prompt, max_tokens=30, ignore_eos=True)
        _, ignored = _single(sim, request)
        assert (ignored.finish_reason, len(ignored.output_ids)) == ("length", 30)
        assert not set(ignored.output_ids) & set(QWEN_EOS)
