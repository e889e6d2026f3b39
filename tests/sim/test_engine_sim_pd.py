"""PD disaggregation in engine-sim: a prefill sim and a decode sim handing KV over, per protocol.

Real sim processes on 127.0.0.1, real grpc.aio clients. Waits are on streams, call metadata and
the sims' own reports, with generous deadlines; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc, vllm_engine_pb2_grpc
from tokenizers import Tokenizer

from herdsman.sim.abort_log import AbortLog
from herdsman.sim.disagg import HandoffCounters, RoomRegistry
from herdsman.sim.engine import SimEngine
from herdsman.sim.model_card import load_model_card
from herdsman.sim.options import SimOptions
from herdsman.sim.sim_request import (
    DecodeHandoff,
    GenerationParams,
    RequestState,
    SimRequest,
    SimSequence,
)
from herdsman.sim.text_source import TextSource

from .kvclient import KvReader
from .simproc import (
    BACKENDS,
    FAST_TIMING,
    QWEN3,
    SimFactory,
    SimProcess,
    generate_request,
    proto,
    split_responses,
    start_sim,
)

CALL_TIMEOUT_S = 30.0
# How long a decode waits for its KV: far beyond a handoff's milliseconds, short enough that
# the tests waiting it out stay quick.
DECODE_KV_TIMEOUT_MS = "4000"
# The shared prefill takes 20 ms per prompt token: a short prompt is prefilled in a fraction of
# a second, a long one stays in prefill for as long as a test needs it to.
SLOW_PREFILL = ("--prefill-ms-per-1k", "20000")
LONG_PROMPT = [1000 + i % 5000 for i in range(3000)]  # a minute of prefill
_BOOTSTRAP = re.compile(r"bootstrap_port=(\d+)")


def _bootstrap_port(sim: SimProcess) -> int:
    match = _BOOTSTRAP.search(sim.listening_line)
    assert match, sim.listening_line
    return int(match[1])


class Pair:
    """A prefill sim and a decode sim of one protocol."""

    def __init__(self, prefill: SimProcess, decode: SimProcess) -> None:
        self.prefill = prefill
        self.decode = decode
        self.backend = prefill.backend
        self.bootstrap_port = _bootstrap_port(prefill)


@pytest.fixture(scope="module", params=BACKENDS)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    backend: str = request.param
    logs = tmp_path_factory.mktemp(f"pd-{backend}")
    prefill = start_sim(
        *FAST_TIMING,
        *SLOW_PREFILL,
        "--role",
        "prefill",
        "--bootstrap-port",
        "0",
        "--pairing-protocol",
        "p1",
        backend=backend,
        abort_log=logs / "prefill.log",
    )
    try:
        decode = start_sim(
            *FAST_TIMING,
            "--role",
            "decode",
            "--kv-transfer-timeout-ms",
            DECODE_KV_TIMEOUT_MS,
            "--stats-file",
            str(logs / "decode-stats.json"),
            "--pairing-protocol",
            "p1",
            backend=backend,
            abort_log=logs / "decode.log",
        )
    except BaseException:
        prefill.stop()
        raise
    yield Pair(prefill, decode)
    decode.stop()
    prefill.stop()


@asynccontextmanager
async def aio_stub(sim: SimProcess) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sim.port}") as channel:
        if sim.backend == "sglang":
            yield sglang_scheduler_pb2_grpc.SglangSchedulerStub(channel)
        else:
            yield vllm_engine_pb2_grpc.VllmEngineStub(channel)


def _prompt(tokenizer: Tokenizer, text: str = "Explain disaggregated serving.") -> list[int]:
    return tokenizer.encode(text).ids


def sglang_request(
    request_id: str,
    prompt: list[int],
    *,
    room: int | None,
    bootstrap_port: int = 0,
    **options: Any,
) -> Any:
    message = generate_request("sglang", request_id, prompt, **options)
    if room is not None:
        message.disaggregated_params.bootstrap_host = "127.0.0.1"
        message.disaggregated_params.bootstrap_port = bootstrap_port
        message.disaggregated_params.bootstrap_room = room
    return message


def vllm_prefill_request(request_id: str, prompt: list[int], **options: Any) -> Any:
    message = generate_request("vllm", request_id, prompt, **options)
    # What vLLM's PD proxies send a kv_producer.
    message.kv_transfer_params_json = json.dumps(
        {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
    )
    return message


def vllm_decode_request(
    request_id: str, prompt: list[int], kv_params: dict[str, Any] | None, **options: Any
) -> Any:
    message = generate_request("vllm", request_id, prompt, **options)
    if kv_params is not None:
        message.kv_transfer_params_json = json.dumps(kv_params)
    return message


async def _collect(call: Any) -> list[Any]:
    return [response async for response in call]


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _collect(call)
    return error.value


def _streamed(responses: list[Any]) -> tuple[dict[int, list[int]], dict[int, Any]]:
    """Per choice index: the streamed token ids, and the GenerateComplete."""
    chunks, completes = split_responses(responses)
    streamed: dict[int, list[int]] = {}
    for chunk in chunks:
        streamed.setdefault(chunk.index, []).extend(chunk.token_ids)
    return streamed, {complete.index: complete for complete in completes}


def _read_stats(path: Path, after: int) -> dict[str, Any]:
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            stats = None  # not written yet, or caught mid-write
        if stats is not None and stats["sequence"] > after:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"no stats write past sequence {after}")


def _signal_stats(sim: SimProcess, path: Path, after: int) -> dict[str, Any]:
    sim.process.send_signal(signal.SIGUSR1)
    return _read_stats(path, after)


# ---- the handoff ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
async def test_prefill_then_decode_streams_every_token(
    pair: Pair, qwen_tokenizer: Tokenizer, n: int
) -> None:
    prompt = _prompt(qwen_tokenizer)
    max_tokens = 12
    async with aio_stub(pair.prefill) as prefill, aio_stub(pair.decode) as decode:
        if pair.backend == "sglang":
            room = 1000 + n
            # The router dispatches both at once; the decode first, so it finds no room yet.
            decode_call = decode.Generate(
                sglang_request(
                    f"sg-{n}",
                    prompt,
                    room=room,
                    bootstrap_port=pair.bootstrap_port,
                    max_tokens=max_tokens,
                    n=n,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            prefill_call = prefill.Generate(
                sglang_request(
                    f"sg-{n}",
                    prompt,
                    room=room,
                    bootstrap_port=pair.bootstrap_port,
                    max_tokens=max_tokens,
                    n=n,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            prefilled, decoded = await asyncio.gather(_collect(prefill_call), _collect(decode_call))
            chunks, prefill_completes = split_responses(prefilled)
            # SGLang's prefill server: one GenerateComplete per choice, the first token only.
            assert chunks == []
        else:
            prefilled = await _collect(
                prefill.Generate(
                    vllm_prefill_request(f"vp-{n}", prompt, max_tokens=max_tokens, n=n),
                    timeout=CALL_TIMEOUT_S,
                )
            )
            _, prefill_completes = split_responses(prefilled)
            kv_params = json.loads(prefill_completes[0].kv_transfer_params_json)
            assert kv_params["do_remote_prefill"] is True
            assert kv_params["do_remote_decode"] is False
            assert kv_params["remote_request_id"] == f"vp-{n}"
            assert (kv_params["remote_host"], kv_params["remote_port"]) == (
                "127.0.0.1",
                pair.bootstrap_port,
            )
            assert kv_params["tp_size"] == 1
            # The prompt's blocks, the partial last one included (16 tokens a block).
            assert len(kv_params["remote_block_ids"]) == -(-len(prompt) // 16)
            assert all(isinstance(b, int) for b in kv_params["remote_block_ids"])
            info = await prefill.GetServerInfo(proto("vllm").GetServerInfoRequest())
            assert kv_params["remote_engine_id"] == info.kv_engine_id
            # The decode has a request id of its own; the params name the prefill's.
            decoded = await _collect(
                decode.Generate(
                    vllm_decode_request(f"vd-{n}", prompt, kv_params, max_tokens=max_tokens, n=n),
                    timeout=CALL_TIMEOUT_S,
                )
            )

    assert sorted(c.index for c in prefill_completes) == list(range(n))
    for complete in prefill_completes:
        assert len(complete.output_ids) == 1
        assert complete.finish_reason == "length"
        assert complete.prompt_tokens == len(prompt)

    streamed, completes = _streamed(decoded)
    assert sorted(completes) == list(range(n))
    first_tokens = {c.index: c.output_ids[0] for c in prefill_completes}
    for index, complete in completes.items():
        assert streamed[index] == list(complete.output_ids)
        assert len(complete.output_ids) == max_tokens
        assert complete.finish_reason == "length"
        assert complete.prompt_tokens == len(prompt)
        # The decode's first token is the one the prefill sampled.
        assert complete.output_ids[0] == first_tokens[index]


async def test_decode_reports_kv_handoffs(pair: Pair, qwen_tokenizer: Tokenizer) -> None:
    stats_path = pair.decode.abort_log.parent / "decode-stats.json"
    before = _signal_stats(pair.decode, stats_path, 0)
    assert before["role"] == "decode"
    prompt = _prompt(qwen_tokenizer, "Count the handoffs.")
    async with aio_stub(pair.prefill) as prefill, aio_stub(pair.decode) as decode:
        if pair.backend == "sglang":
            requests = [
                sglang_request(
                    "stats", prompt, room=77, bootstrap_port=pair.bootstrap_port, max_tokens=3
                )
                for _ in range(2)
            ]
            await asyncio.gather(
                _collect(prefill.Generate(requests[0], timeout=CALL_TIMEOUT_S)),
                _collect(decode.Generate(requests[1], timeout=CALL_TIMEOUT_S)),
            )
        else:
            prefilled = await _collect(
                prefill.Generate(
                    vllm_prefill_request("stats", prompt, max_tokens=3), timeout=CALL_TIMEOUT_S
                )
            )
            kv_params = json.loads(split_responses(prefilled)[1][0].kv_transfer_params_json)
            await _collect(
                decode.Generate(
                    vllm_decode_request("stats", prompt, kv_params, max_tokens=3),
                    timeout=CALL_TIMEOUT_S,
                )
            )
        after = _signal_stats(pair.decode, stats_path, before["sequence"])
        assert after["kv_handoffs"]["received"] == before["kv_handoffs"]["received"] + 1

        # What the transfer took is reported: on SGLang's GetLoads, and (both protocols) on the
        # KV-event stream's EngineLoad.
        if pair.backend == "sglang":
            loads = await decode.GetLoads(proto("sglang").GetLoadsRequest(include=["disagg"]))
            disagg = loads.loads[0].disaggregation
            assert disagg.mode == "decode"
            assert disagg.kv_transfer_latency_ms > 0
            assert disagg.kv_transfer_speed_gb_s > 0
    reader = KvReader(pair.decode, loads_before_first_batch=True)
    try:
        batches = reader.wait_for(lambda b: any(x.load.HasField("disaggregation") for x in b))
    finally:
        reader.close()
    load = next(b.load for b in batches if b.load.HasField("disaggregation"))
    assert load.disaggregation.mode == "decode"
    assert load.disaggregation.kv_transfer_latency_ms > 0


# ---- refusals and failures -----------------------------------------------------------------


async def test_decode_without_room_is_refused(pair: Pair, qwen_tokenizer: Tokenizer) -> None:
    prompt = _prompt(qwen_tokenizer)
    async with aio_stub(pair.decode) as decode, aio_stub(pair.prefill) as prefill:
        if pair.backend == "sglang":
            error = await _refusal(
                decode.Generate(sglang_request("no-room", prompt, room=None), timeout=10)
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "decode worker needs a bootstrap room" in (error.details() or "")
            error = await _refusal(
                prefill.Generate(sglang_request("no-room", prompt, room=None), timeout=10)
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "prefill worker needs a bootstrap room" in (error.details() or "")
        else:
            error = await _refusal(
                decode.Generate(vllm_decode_request("no-params", prompt, None), timeout=10)
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "decode worker needs kv_transfer_params from a prefill" in (
                error.details() or ""
            )
            # A kv_producer serves a request without do_remote_decode as a regular engine.
            responses = await _collect(
                prefill.Generate(generate_request("vllm", "plain", prompt, max_tokens=5))
            )
            streamed, completes = _streamed(responses)
            assert len(streamed[0]) == 5
            assert not completes[0].HasField("kv_transfer_params_json")


async def test_decode_fails_when_the_kv_never_comes(
    pair: Pair, qwen_tokenizer: Tokenizer, sim_factory: SimFactory
) -> None:
    prompt = _prompt(qwen_tokenizer, "Nobody prefills this.")
    timeout_s = int(DECODE_KV_TIMEOUT_MS) // 1000
    async with aio_stub(pair.decode) as decode:
        if pair.backend == "sglang":
            # A room the prefill never gets: the decode waits for it until its timeout.
            error = await _refusal(
                decode.Generate(
                    sglang_request(
                        "lonely", prompt, room=424242, bootstrap_port=pair.bootstrap_port
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            )
            assert error.code() == grpc.StatusCode.ABORTED
            assert error.details() == (
                f"KV transfer for bootstrap room 424242 did not arrive within {timeout_s}s"
            )
            return
        # vLLM's decode comes after its prefill answered: a request the prefill does not know
        # is an error at once...
        unknown = {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_request_id": "never-prefilled",
            "remote_host": "127.0.0.1",
            "remote_port": pair.bootstrap_port,
        }
        error = await _refusal(
            decode.Generate(
                vllm_decode_request("d-unknown", prompt, unknown), timeout=CALL_TIMEOUT_S
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "holds no KV for request never-prefilled" in (error.details() or "")

        # ...while a prefill that drops its KV (--drop-kv) leaves the decode waiting it out.
        dropper = sim_factory(
            *FAST_TIMING, "--role", "prefill", "--bootstrap-port", "0", "--drop-kv"
        )
        async with aio_stub(dropper) as prefill:
            prefilled = await _collect(
                prefill.Generate(vllm_prefill_request("dropped", prompt, max_tokens=4))
            )
            _, completes = split_responses(prefilled)
            assert completes[0].finish_reason == "length"
            kv_params = json.loads(completes[0].kv_transfer_params_json)
        error = await _refusal(
            decode.Generate(
                vllm_decode_request("d-dropped", prompt, kv_params), timeout=CALL_TIMEOUT_S
            )
        )
        assert error.code() == grpc.StatusCode.ABORTED
        assert error.details() == (
            f"KV transfer for request dropped did not arrive within {timeout_s}s"
        )


async def test_prefill_abort_fails_the_waiting_decode(pair: Pair) -> None:
    pb = proto(pair.backend)
    async with aio_stub(pair.prefill) as prefill, aio_stub(pair.decode) as decode:
        if pair.backend == "sglang":
            prefill_request = sglang_request(
                "long", LONG_PROMPT, room=31337, bootstrap_port=pair.bootstrap_port
            )
            decode_request = sglang_request(
                "long", LONG_PROMPT, room=31337, bootstrap_port=pair.bootstrap_port
            )
            abort_request = pb.AbortRequest(request_id="long")
        else:
            prefill_request = vllm_prefill_request("long", LONG_PROMPT)
            # As a decode whose params name a request still in prefill would send.
            decode_request = vllm_decode_request(
                "long-d",
                LONG_PROMPT,
                {
                    "do_remote_prefill": True,
                    "remote_request_id": "long",
                    "remote_host": "127.0.0.1",
                    "remote_port": pair.bootstrap_port,
                },
            )
            abort_request = pb.AbortRequest(request_ids=["long"])
        prefill_call = prefill.Generate(prefill_request, timeout=CALL_TIMEOUT_S)
        # Headers come once the sim holds the request: the room exists, the decode waits.
        await prefill_call.initial_metadata()
        decode_call = decode.Generate(decode_request, timeout=CALL_TIMEOUT_S)
        await decode_call.initial_metadata()
        if pair.backend == "sglang":
            loads = await decode.GetLoads(pb.GetLoadsRequest(include=["all"]))
            assert loads.loads[0].disaggregation.decode_prealloc_queue_reqs == 1
            assert loads.loads[0].num_waiting_reqs == 1

        await prefill.Abort(abort_request)
        error = await _refusal(decode_call)
        # Not the timeout's message: the decode learnt of the abort.
        assert error.code() == grpc.StatusCode.ABORTED
        assert "dropped the KV of" in (error.details() or "")
        assert "aborted" in (error.details() or "")
        _, completes = split_responses(await _collect(prefill_call))
        assert [c.finish_reason for c in completes] == ["abort"]


async def test_decode_abort_stops_waiting(pair: Pair) -> None:
    pb = proto(pair.backend)
    async with aio_stub(pair.decode) as decode:
        if pair.backend == "sglang":
            request = sglang_request(
                "waiting", [1, 2, 3], room=9001, bootstrap_port=pair.bootstrap_port, n=2
            )
            abort_request = pb.AbortRequest(request_id="waiting")
        else:
            request = vllm_decode_request("waiting", [1, 2, 3], None, n=2)
            # The legacy typed params, naming a prefill that is not listening (yet): the decode
            # keeps retrying until its timeout.
            request.kv_transfer_params.remote_host = "127.0.0.1"
            request.kv_transfer_params.remote_port = _closed_port()
            abort_request = pb.AbortRequest(request_ids=["waiting"])
        call = decode.Generate(request, timeout=CALL_TIMEOUT_S)
        await call.initial_metadata()
        await decode.Abort(abort_request)
        responses = await _collect(call)
    streamed, completes = _streamed(responses)
    assert streamed == {}
    assert sorted(completes) == [0, 1]
    assert {c.finish_reason for c in completes.values()} == {"abort"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- data parallelism, server info ---------------------------------------------------------


async def test_dp_prefill_follows_the_bootstrap_room(
    sim_factory: SimFactory, qwen_tokenizer: Tokenizer
) -> None:
    prefill = sim_factory(
        *FAST_TIMING,
        "--role",
        "prefill",
        "--bootstrap-port",
        "0",
        "--dp-size",
        "2",
        backend="sglang",
    )
    port = _bootstrap_port(prefill)
    pb = proto("sglang")
    prompt = _prompt(qwen_tokenizer)
    async with aio_stub(prefill) as stub:
        error = await _refusal(
            stub.Generate(
                sglang_request("pinned", prompt, room=5, bootstrap_port=port, data_parallel_rank=0)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must follow the bootstrap room" in (error.details() or "")

        for request_id, rank in (("unpinned", None), ("follows", 1)):
            responses = await _collect(
                stub.Generate(
                    sglang_request(
                        request_id, prompt, room=5, bootstrap_port=port, data_parallel_rank=rank
                    )
                )
            )
            assert len(split_responses(responses)[1]) == 1
            # Room 5 is held, unfetched, on rank 5 % 2 = 1.
            loads = await stub.GetLoads(pb.GetLoadsRequest(include=["disagg"]))
            held = {
                load.dp_rank: load.disaggregation.prefill_inflight_queue_reqs
                for load in loads.loads
            }
            assert held == {0: 0, 1: 1}
            assert {load.disaggregation.mode for load in loads.loads} == {"prefill"}
        # Without asking for the section, GetLoads leaves it out, as SGLang does.
        loads = await stub.GetLoads(pb.GetLoadsRequest())
        assert not loads.loads[0].HasField("disaggregation")


async def test_server_info_reports_pairing(pair: Pair) -> None:
    pb = proto(pair.backend)
    async with aio_stub(pair.prefill) as prefill, aio_stub(pair.decode) as decode:
        prefill_info = await prefill.GetServerInfo(pb.GetServerInfoRequest())
        decode_info = await decode.GetServerInfo(pb.GetServerInfoRequest())
    if pair.backend == "sglang":
        prefill_args = dict(prefill_info.server_args)
        decode_args = dict(decode_info.server_args)
        assert prefill_args["disaggregation_mode"] == "prefill"
        assert decode_args["disaggregation_mode"] == "decode"
        assert prefill_args["disaggregation_bootstrap_port"] == pair.bootstrap_port
        assert "disaggregation_bootstrap_port" not in decode_args
        for args in (prefill_args, decode_args):
            assert args["kv_cache_dtype"] == "auto"
            assert args["page_size"] == 16
            assert args["attention_backend"] == ""
            assert args["dtype"] == "bfloat16"
            assert args["pairing_protocol"] == "p1"
        return
    assert (prefill_info.kv_connector, prefill_info.kv_role) == ("NixlConnector", "kv_producer")
    assert (decode_info.kv_connector, decode_info.kv_role) == ("NixlConnector", "kv_consumer")
    assert prefill_info.kv_engine_id and decode_info.kv_engine_id
    assert prefill_info.kv_engine_id != decode_info.kv_engine_id
    for info in (prefill_info, decode_info):
        assert info.kv_cache_dtype == "auto"
        assert info.block_size == 16
        assert info.attention_backend == ""
        assert info.model_dtype == "torch.bfloat16"
        assert info.pairing_protocol == "p1"


async def test_regular_sim_reports_no_pd(fast_sim: SimProcess) -> None:
    pb = fast_sim.pb
    async with aio_stub(fast_sim) as stub:
        info = await stub.GetServerInfo(pb.GetServerInfoRequest())
        if fast_sim.backend == "sglang":
            assert dict(info.server_args)["disaggregation_mode"] == "null"
            loads = await stub.GetLoads(pb.GetLoadsRequest(include=["disagg"]))
            assert loads.loads[0].disaggregation.mode == "null"
        else:
            assert (info.kv_connector, info.kv_role, info.kv_engine_id) == ("", "", "")


def test_prefill_role_needs_a_bootstrap_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "herdsman.sim", "--model-path", str(QWEN3), "--role", "prefill"],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_S,
    )
    assert result.returncode == 2
    assert "--role prefill needs --bootstrap-port" in result.stderr


# ---- the scheduler and the room registry on their own --------------------------------------


class _Rank:
    rooms_held = 0
    kv_transfer_ms = 0.0
    kv_transfer_gb_s = 0.0


def _one_token_request(request_id: str, prompt: list[int], first_token: int) -> SimRequest:
    params = GenerationParams(
        request_id=request_id,
        prompt_ids=prompt,
        max_tokens=1,
        min_tokens=0,
        stop_token_ids=frozenset(),
        ignore_eos=False,
        n=1,
        stream=False,
        logprobs=None,
        seed=None,
    )
    request = SimRequest(params, 0)
    sequence = SimSequence(request, 0, 0, 1, -1)
    sequence.output.append(first_token)
    request.sequences.append(sequence)
    return request


def test_decode_is_scheduled_once_its_kv_arrived(qwen_tokenizer: Tokenizer) -> None:
    options = SimOptions(model_path=QWEN3, role="decode", ttft_base_ms=5.0)
    engine = SimEngine(
        options, load_model_card(QWEN3, qwen_tokenizer), TextSource(qwen_tokenizer), AbortLog(None)
    )
    handoff = DecodeHandoff("127.0.0.1", 1, "7", "bootstrap room 7", wait_unknown=True)
    params = dataclasses.replace(
        _one_token_request("d", list(range(100, 140)), 0).params, handoff=handoff
    )

    aborted = engine.submit(params)
    assert aborted.state is RequestState.AWAITING_KV
    load = engine.load()
    # Waiting (as SGLang counts its prealloc queue), but no prefill work in hand.
    assert (load.waiting, load.prefill_pending_tokens, load.waiting_uncached_tokens) == (1, 0, 0)
    assert load.disaggregation is not None and load.disaggregation.awaiting_kv == 1
    engine.abort("d")
    assert aborted.state is RequestState.ABORTED
    assert engine.load().waiting == 0

    request = engine.submit(params)
    engine.kv_receiving(request)
    disaggregation = engine.load().disaggregation
    assert disaggregation is not None
    assert (disaggregation.awaiting_kv, disaggregation.receiving_kv) == (0, 1)
    engine.kv_arrived(request, [4242])
    assert request.state is RequestState.PENDING
    assert engine.load().waiting_uncached_tokens == 0
    engine._admit(100.0)
    # Neither TTFT nor prefill: the prefill did both.
    assert request.ready_at == 100.0
    engine._start_ready(100.0)
    assert request.sequences[0].output == [4242]


async def test_registry_hands_off_once_and_frees_unfetched_rooms() -> None:
    counters = HandoffCounters()
    options = SimOptions(model_path=QWEN3, role="prefill", kv_transfer_timeout_ms=50.0)
    registry = RoomRegistry(options, counters)
    rank: Any = _Rank()
    fetch = {"wait_unknown": False, "wait_s": 5.0, "block_ids": None}

    held = _one_token_request("a", list(range(40)), 7)
    registry.open(held, rank, "a")
    waiter = asyncio.ensure_future(registry.fetch("a", prompt_tokens=40, **fetch))
    await asyncio.sleep(0)
    assert not waiter.done()  # prefilling: the fetch waits
    held.state = RequestState.FINISHED
    registry.close(held)
    reply = await waiter
    assert reply["status"] == "ready"
    assert (reply["prompt_tokens"], reply["first_token_ids"], reply["block_ids"]) == (
        40,
        [7],
        [0, 1, 2],
    )
    assert (await registry.fetch("a", prompt_tokens=40, **fetch))["status"] == "handed_off"
    assert (rank.rooms_held, counters.sent) == (0, 1)

    wrong = _one_token_request("b", list(range(10)), 8)
    registry.open(wrong, rank, "b")
    wrong.state = RequestState.FINISHED
    registry.close(wrong)
    assert rank.rooms_held == 1
    # A decode sent with another prompt is refused, and the room stays for the right one.
    assert (await registry.fetch("b", prompt_tokens=11, **fetch))["status"] == "mismatch"
    # Nobody fetches it: freed after the timeout, and a late decode is told so.
    assert await registry.wait_for_change("b", 5.0)
    assert (await registry.fetch("b", prompt_tokens=10, **fetch))["status"] == "expired"
    assert (rank.rooms_held, counters.expired) == (0, 1)
