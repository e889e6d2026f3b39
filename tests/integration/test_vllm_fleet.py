"""cache_aware in front of two real vLLM engines that publish their KV-cache events (issue 12).

Two vLLM CPU engines serve the tiny random-weight Llama with prefix caching and KV events on
(``--kv-events-config``: a ZMQ publisher per engine, relayed by the gRPC servicer's
``SubscribeKvEvents``); herdsman runs in front of both with ``--policy cache_aware``. Several
conversations, each with its own long system prompt (several KV blocks), take three turns each
through the official ``openai`` client. What is checked, from what the engines themselves say:

- every turn of a conversation runs on the same engine: vLLM's request log (``Added request
  <id>``, the gateway's request id) names the engine of each request;
- from the second turn on, that engine serves the conversation's prefix from its cache: vLLM's
  ``num_cached_tokens`` for the request (herdsman's ``usage.prompt_tokens_details.cached_tokens``)
  covers at least every full block of the previous turn's prompt;
- both engines get conversations. A new conversation (cached nowhere) goes to the least loaded
  engine, and rendezvous hashing of the prompt's start breaks ties: with requests that come one
  after the other every engine is idle, so the hash alone would place them (a coin toss per
  conversation, which can put all on one engine). So the first turns are placed while the
  earlier ones are still generating (held open, streamed), each placed only once the gateway
  sees the engines' loads count every earlier one: 1-0, 1-1, 2-1, two conversations each, on
  every run. Those first turns are then cut short (the client goes away, the gateway aborts
  them in the engines) and their text so far is the assistant's reply.

Nothing here waits on time: every wait is for a condition (the gateway's view of the engines'
loads, a KV-event batch), with a generous deadline.
"""

from __future__ import annotations

import json
import queue
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import (
    SERVED_NAME,
    EngineClient,
    Gateway,
    VllmServer,
    _health_serving,
    engine_port,
    grpc_server_argv,
    launch_vllm,
    start_gateway_logged,
    vllm_env,
    wait_for,
    wait_vllm_ready,
)

ENGINES = 2
CONVERSATIONS = 4
TURNS = 3
# Words of each system prompt: about 700 tokens with the Llama 3 tokenizer, five blocks of 128.
SYSTEM_WORDS = 400
MIN_SYSTEM_BLOCKS = 5
USER_WORDS = 100
TIMEOUT = 120
WAIT = 60.0
WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
]  # fmt: skip


@dataclass
class FleetEngine:
    server: VllmServer
    block_size: int

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def url(self) -> str:
        return f"grpc://{self.server.address}"

    def ran(self, request_id: str) -> bool:
        """Whether vLLM's request log names this gateway request (vLLM appends its own suffix)."""
        pattern = rf"Added request {re.escape(request_id)}(-[0-9a-f]+)?\.$"
        return re.search(pattern, self.server.log_text(), re.MULTILINE) is not None


def _kv_events_config(socket_dir: Path, index: int) -> str:
    # A path endpoint (ipc://) is bound by vLLM's publisher, as a tcp one only is with a wildcard
    # host (tcp://*:PORT; tcp://127.0.0.1:PORT makes the publisher connect, and no event ever
    # reaches the servicer's subscriber). Sockets in a directory of their own: nothing to race.
    return json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"ipc://{socket_dir}/kv-{index}.pub",
            "replay_endpoint": f"ipc://{socket_dir}/kv-{index}.replay",
        }
    )


def _start_engine(
    vllm_python: Path, model: Path, workdir: Path, index: int, port: int
) -> VllmServer:
    """One vLLM gRPC server with prefix caching and KV events (not waited for)."""
    argv = grpc_server_argv(
        vllm_python,
        model,
        SERVED_NAME,
        port,
        "--enable-prefix-caching",
        "--kv-events-config",
        _kv_events_config(workdir, index),
        # "Added request X.": which engine ran which request.
        "--enable-log-requests",
    )
    return launch_vllm(argv, workdir / f"vllm-{index}.log", f"127.0.0.1:{port}", vllm_env())


def _block_size(address: str) -> int:
    """The engine's KV block size, from its GetServerInfo."""
    import grpc
    from smg_grpc_proto.generated import vllm_engine_pb2 as pb2

    with grpc.insecure_channel(address) as channel:
        info = channel.unary_unary(
            "/vllm.grpc.engine.VllmEngine/GetServerInfo",
            request_serializer=pb2.GetServerInfoRequest.SerializeToString,
            response_deserializer=pb2.GetServerInfoResponse.FromString,
        )(pb2.GetServerInfoRequest(), timeout=10)
    return info.block_size


@pytest.fixture(scope="module")
def fleet(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[FleetEngine]]:
    """Two engines, started side by side (the slow part of this module: ~40 s on 2 cores)."""
    workdir = tmp_path_factory.mktemp("vllm-fleet")
    ports: set[int] = set()
    while len(ports) < ENGINES:
        ports.add(engine_port(ports))
    servers = [
        _start_engine(vllm_python, tiny_model, workdir, i, port)
        for i, port in enumerate(sorted(ports))
    ]
    try:
        for server in servers:  # started side by side, waited for one after the other
            wait_vllm_ready(server, _health_serving)
        engines = [FleetEngine(server, _block_size(server.address)) for server in servers]
    except BaseException:
        _stop(servers)
        raise
    ready = ", ".join(f"{e.address} {e.server.startup_seconds:.1f}s" for e in engines)
    print(f"\nvLLM fleet ready: {ready} (logs: {workdir})", file=sys.stderr)
    yield engines
    _stop(servers)


def _stop(servers: list[VllmServer]) -> None:
    """Both at once: each takes several seconds to shut down."""
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def fleet_gateway(
    fleet: list[FleetEngine], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway-fleet") / "gateway.log"
    others = [arg for engine in fleet[1:] for arg in ("--worker", engine.url)]
    gateway = start_gateway_logged(
        fleet[0].address,
        log,
        *others,
        "--model-path", str(tiny_model),
        "--policy", "cache_aware",
    )  # fmt: skip
    yield gateway
    gateway.stop()


# --- the engines' own KV events -----------------------------------------------------------------


class KvEventTap:
    """A raw SubscribeKvEvents call on one engine (grpcio), its batches gathered by a thread."""

    def __init__(self, address: str) -> None:
        import grpc
        from smg_grpc_proto.generated import common_pb2

        self.channel = grpc.insecure_channel(address)
        subscribe = self.channel.unary_stream(
            "/vllm.grpc.engine.VllmEngine/SubscribeKvEvents",
            request_serializer=common_pb2.SubscribeKvEventsRequest.SerializeToString,
            response_deserializer=common_pb2.KvEventBatch.FromString,
        )
        self.call = subscribe(common_pb2.SubscribeKvEventsRequest(start_sequence_number=0))
        # The servicer sends its headers once its ZMQ subscriber is connected.
        self.call.initial_metadata()
        self.batches: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        import grpc

        try:
            for batch in self.call:
                self.batches.put(batch)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.batches.put(exc)

    def wait_for_blocks(self, expected: list[list[int]], timeout: float) -> list | None:
        """The stored blocks holding each of ``expected``'s token ids, in that order, if they all
        arrive within ``timeout``."""
        found: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(expected):
            try:
                batch = self.batches.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if isinstance(batch, Exception):
                raise batch
            for event in batch.events:  # type: ignore[attr-defined]
                for stored in event.stored.blocks if event.HasField("stored") else ():
                    ids = list(stored.token_ids)
                    if ids in expected:
                        found[expected.index(ids)] = stored
        return [found[i] for i in range(len(expected))]

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)
        self.channel.close()


def test_engines_stream_their_kv_blocks(fleet: list[FleetEngine]) -> None:
    """Each engine's SubscribeKvEvents carries the blocks a request stored: its token ids, block
    by block, each with its hash and the engine's block size."""
    for n, engine in enumerate(fleet):
        block = engine.block_size
        assert block > 0, "GetServerInfo reports no block size"
        tap = KvEventTap(engine.address)
        client = EngineClient(engine.address)
        try:
            # ZMQ's subscription reaches the publisher a moment after the servicer's headers,
            # and events published before it are not relayed: fresh prompts until one's arrive.
            blocks = None
            deadline = time.monotonic() + WAIT
            attempt = 0
            while blocks is None and time.monotonic() < deadline:
                attempt += 1
                base = 5000 + 10000 * n + 1000 * attempt
                prompt = list(range(base, base + 3 * block + 5))
                client.generate(prompt, temperature=0.0, max_tokens=2)
                expected = [prompt[i * block : (i + 1) * block] for i in range(3)]
                blocks = tap.wait_for_blocks(expected, timeout=5.0)
            assert blocks is not None, f"no KV events from {engine.address} in {WAIT:.0f}s"
            assert {b.block_size for b in blocks} == {block}
            assert len({b.block_hash for b in blocks}) == 3
        finally:
            client.close()
            tap.close()


# --- conversations through the gateway ----------------------------------------------------------


def system_prompt(index: int) -> str:
    """A long system prompt of its own, different from its first words on."""
    rng = random.Random(index)
    return f"Persona {index}. " + " ".join(rng.choice(WORDS) for _ in range(SYSTEM_WORDS))


def user_message(index: int, turn: int) -> str:
    """A later turn's question: over a block long, so that every turn's prompt reaches a block
    further than the one before, and the next turn finds that block cached too."""
    rng = random.Random(f"{index}/{turn}")
    return f"Turn {turn}: " + " ".join(rng.choice(WORDS) for _ in range(USER_WORDS)) + "?"


@dataclass
class Turn:
    request_id: str
    prompt_ids: list[int]
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


@dataclass
class Conversation:
    index: int
    messages: list[dict[str, str]]
    turns: list[Turn] = field(default_factory=list)
    engine: int | None = None


def tokenize(gateway: Gateway, messages: list[dict[str, str]]) -> tuple[list[int], int]:
    """The prompt ids of a chat as the gateway makes them, and the model's context length."""
    response = httpx.post(
        f"http://{gateway.address}/tokenize",
        json={"model": SERVED_NAME, "messages": messages, "add_generation_prompt": True},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["tokens"], body["max_model_len"]


def workers(gateway: Gateway) -> dict[str, dict]:
    """GET /workers, by worker URL."""
    response = httpx.get(f"http://{gateway.address}/workers", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {w["url"]: w for w in response.json()["workers"]}


def loads_count(gateway: Gateway, running: int) -> bool:
    """The gateway sees exactly ``running`` requests running on the engines (their own load
    records) and nothing waiting there for its prefill: every request placed so far is in the
    loads the next one is placed by, and no stale queue makes an engine look busier."""
    view = workers(gateway).values()
    return (
        sum(w["load"]["running"] for w in view) == running
        and all(w["load"]["waiting"] == 0 for w in view)
        and all(not w["load"]["waiting_uncached_tokens"] for w in view)
        and sum(w["in_flight"] for w in view) == running
    )


def index_holds(gateway: Gateway, blocks: int) -> bool:
    """The gateway's prefix index holds at least ``blocks`` blocks of every engine, from its KV
    events (``blocks`` counts those; the prompts routed there are ``approx_entries``)."""
    return all(
        w["kv_cache"]["stream"] == "events" and w["kv_cache"]["blocks"] >= blocks
        for w in workers(gateway).values()
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _engine_of(fleet: list[FleetEngine], request_id: str) -> list[int]:
    return [i for i, engine in enumerate(fleet) if engine.ran(request_id)]


def test_conversations_stay_on_the_engine_that_caches_them(
    fleet: list[FleetEngine], fleet_gateway: Gateway
) -> None:
    block = fleet[0].block_size
    assert {e.block_size for e in fleet} == {block}
    client = openai.OpenAI(
        base_url=f"http://{fleet_gateway.address}/v1",
        api_key="unused",
        max_retries=0,
        timeout=TIMEOUT,
    )
    conversations = [
        Conversation(
            i,
            [
                {"role": "system", "content": system_prompt(i)},
                {"role": "user", "content": f"Hello, I am visitor number {i}. Who are you?"},
            ],
        )
        for i in range(CONVERSATIONS)
    ]

    # Turn 1: each conversation placed while the earlier ones run.
    held: list[openai.Stream] = []
    try:
        for n, conv in enumerate(conversations):
            ids, context = tokenize(fleet_gateway, conv.messages)
            assert len(ids) >= MIN_SYSTEM_BLOCKS * block + 1, "system prompt too short"
            assert wait_for(lambda n=n: loads_count(fleet_gateway, n), WAIT), (
                f"the gateway never saw {n} requests running: {workers(fleet_gateway)}"
            )
            stream = client.chat.completions.create(
                model=SERVED_NAME,
                messages=conv.messages,  # type: ignore[arg-type]
                temperature=0,
                # As long as the context allows: it runs until the client goes away.
                max_tokens=context - len(ids),
                stream=True,
            )
            held.append(stream)
            reply = None
            for chunk in stream:
                assert not (chunk.choices and chunk.choices[0].finish_reason), chunk
                if chunk.choices and chunk.choices[0].delta.content:
                    reply = chunk.choices[0].delta.content
                    conv.turns.append(Turn(chunk.id, ids))
                    break
            assert reply is not None, "the stream ended before its first token"
            conv.messages.append({"role": "assistant", "content": reply})
        assert wait_for(lambda: loads_count(fleet_gateway, CONVERSATIONS), WAIT), (
            f"the gateway never saw {CONVERSATIONS} requests running: {workers(fleet_gateway)}"
        )
        placed = {url: w["load"]["running"] for url, w in workers(fleet_gateway).items()}
    finally:
        for stream in held:
            stream.close()
    for conv in conversations:
        where = _engine_of(fleet, conv.turns[0].request_id)
        assert len(where) == 1, f"conversation {conv.index}'s first turn ran on engines {where}"
        conv.engine = where[0]
    spread = Counter(conv.engine for conv in conversations)
    assert spread == {i: CONVERSATIONS // ENGINES for i in range(ENGINES)}, (
        f"conversations per engine {dict(spread)}, the gateway's loads {placed}"
    )
    # The aborted first turns have left the engines, and the blocks they stored have reached the
    # gateway's prefix index through the engines' KV events.
    assert wait_for(lambda: loads_count(fleet_gateway, 0), WAIT), workers(fleet_gateway)
    assert wait_for(lambda: index_holds(fleet_gateway, MIN_SYSTEM_BLOCKS * spread[0]), WAIT), (
        workers(fleet_gateway)
    )

    # Turns 2 and 3, one request at a time, the conversations of one engine one after the other
    # (a policy that ignores the cache, round robin, would split each pair). Each is sent once
    # the engines' records show the one before done: a record taken while it still queued
    # would make its engine look busy with a prefill backlog, and the next request go elsewhere.
    for turn in range(2, TURNS + 1):
        for conv in sorted(conversations, key=lambda c: (c.engine, c.index)):
            conv.messages.append({"role": "user", "content": user_message(conv.index, turn)})
            ids, _ = tokenize(fleet_gateway, conv.messages)
            assert wait_for(lambda: loads_count(fleet_gateway, 0), WAIT), workers(fleet_gateway)
            completion = client.chat.completions.create(
                model=SERVED_NAME,
                messages=conv.messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=8,
            )
            usage = completion.usage
            assert usage is not None
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details is not None else 0
            conv.turns.append(Turn(completion.id, ids, usage.prompt_tokens, cached))
            conv.messages.append(
                {"role": "assistant", "content": completion.choices[0].message.content or ""}
            )

    for conv in conversations:  # shown with the captured output of a failure
        cached = [(t.cached_tokens, t.prompt_tokens) for t in conv.turns[1:]]
        print(f"conversation {conv.index}: engine {conv.engine}, cached/prompt {cached}")
    # (a) Every turn on the engine of the first.
    for conv in conversations:
        engines = [_engine_of(fleet, turn.request_id) for turn in conv.turns]
        assert engines == [[conv.engine]] * TURNS, (
            f"conversation {conv.index}: turns ran on engines {engines}"
        )
    # (b) ... which served at least every full block of the previous prompt from its cache: on
    # the third turn, blocks that the second turn stored.
    for conv in conversations:
        least = (MIN_SYSTEM_BLOCKS - 1) * block
        for previous, turn in zip(conv.turns, conv.turns[1:], strict=False):
            assert turn.prompt_tokens == len(turn.prompt_ids)
            reused = common_prefix(previous.prompt_ids, turn.prompt_ids) // block * block
            assert reused > least, "each turn's prompt should reach a block further"
            least = reused
            assert turn.cached_tokens is not None
            assert reused <= turn.cached_tokens < turn.prompt_tokens, (
                f"conversation {conv.index}: {turn.cached_tokens} of {turn.prompt_tokens} "
                f"prompt tokens cached, {reused} expected at least"
            )
    # The gateway placed them by the engines' own records: their KV-event streams are live.
    for url, view in workers(fleet_gateway).items():
        assert view["load"]["source"] == "events", (url, view)
