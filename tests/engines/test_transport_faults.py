"""The gRPC transports against a real grpcio server (engine-sim) and through a fault proxy:
deadlines, keepalive, resets, GOAWAY, stream limits, flow control, message size, TLS, refusals.

Every wait is on an event or a condition with a generous deadline; nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import trustme
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import vllm_engine_pb2 as pb
from tests.faultproxy import FaultProxy
from tests.sim.simproc import SimFactory, SimProcess

from herdsman.engines import EngineBusy, EngineRequest, SamplingParams, connect_engine
from herdsman.engines.grpc_engine import engine_error
from herdsman.engines.transport import (
    NativeTransport,
    RpcError,
    StatusCode,
    Transport,
    transport_class,
)
from herdsman.engines.transport.base import TransportOptions
from herdsman.engines.transport.grpcio import rpc_error

T = TypeVar("T")

SERVICE = "/vllm.grpc.engine.VllmEngine"
GENERATE = f"{SERVICE}/Generate"
HEALTH = f"{SERVICE}/HealthCheck"
TOKENIZER = f"{SERVICE}/GetTokenizer"
# Tokens every few milliseconds, for as long as a test wants.
STREAMING = (
    "--ttft-base-ms",
    "1",
    "--prefill-ms-per-1k",
    "0",
    "--itl-base-ms",
    "5",
    "--itl-per-running-ms",
    "0",
    "--max-model-len",
    "1000000",
)
# Small keepalive settings so a dead connection is noticed in well under a second or two; the
# calls' deadlines (GENEROUS) are far longer, so a test fails if keepalive does not act.
FAST_KEEPALIVE = {"keepalive_interval": 0.2, "keepalive_timeout": 0.5}
GENEROUS = 30.0


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(120):  # a hang fails the test instead of blocking the suite
            return await coroutine

    return asyncio.run(bounded())


def make(name: str, address: str, **options: Any) -> Transport:
    return transport_class(name)(address, TransportOptions(**options))


def generate(request_id: str, max_tokens: int = 20) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        tokenized=pb.TokenizedInput(input_ids=[1, 2, 3]),
        sampling_params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        stream=True,
    )


def stream(
    transport: Transport, request_id: str, max_tokens: int = 20, timeout: float = GENEROUS
) -> AsyncGenerator[Any, None]:
    request = generate(request_id, max_tokens)
    return transport.stream(GENERATE, request, pb.GenerateResponse, timeout)


async def health(transport: Transport, timeout: float = GENEROUS) -> bool:
    response = await transport.unary(
        HEALTH, pb.HealthCheckRequest(), pb.HealthCheckResponse, timeout
    )
    return bool(response.healthy)


async def take(responses: AsyncGenerator[Any, None], count: int) -> list[Any]:
    return [await anext(responses) for _ in range(count)]


async def drain(responses: AsyncGenerator[Any, None]) -> tuple[int, bool]:
    """(tokens streamed, whether the complete message arrived) of the rest of a stream."""
    tokens, complete = 0, False
    async for response in responses:
        if response.HasField("chunk"):
            tokens += len(response.chunk.token_ids)
        else:
            complete = True
    return tokens, complete


async def expect_error(responses: AsyncGenerator[Any, None]) -> RpcError:
    with pytest.raises(RpcError) as error:
        async for _ in responses:
            pass
    return error.value


async def eventually(call: Callable[[], Awaitable[T]], within: float = GENEROUS) -> T:
    """``call()`` once it stops failing UNAVAILABLE (grpcio may be in reconnect backoff)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except RpcError as exc:
            if exc.code != StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
        await asyncio.sleep(0.1)


async def poll(condition: Callable[[], bool], within: float = GENEROUS) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def through_proxy(sim: SimProcess, proxies: list[FaultProxy]) -> FaultProxy:
    proxy = FaultProxy(("127.0.0.1", sim.port)).start()
    proxies.append(proxy)
    return proxy


# -- deadlines -------------------------------------------------------------------------------
def test_deadline_before_the_first_message(sims: SimFactory, transport_name: str) -> None:
    sim = sims("--hang")

    async def main() -> RpcError:
        transport = make(transport_name, f"127.0.0.1:{sim.port}")
        try:
            return await expect_error(stream(transport, "hang-first", timeout=0.5))
        finally:
            await transport.close()

    assert run(main()).code == StatusCode.DEADLINE_EXCEEDED
    assert sim.wait_for_log_line("cancel hang-first", timeout=GENEROUS)


def test_deadline_after_the_first_message(sims: SimFactory, transport_name: str) -> None:
    sim = sims(*STREAMING, "--hang-after-tokens", "3")

    async def main() -> tuple[int, RpcError]:
        transport = make(transport_name, f"127.0.0.1:{sim.port}")
        responses = stream(transport, "hang-later", max_tokens=50, timeout=1.0)
        tokens = 0
        try:
            with pytest.raises(RpcError) as error:
                async for response in responses:
                    tokens += len(response.chunk.token_ids)
            return tokens, error.value
        finally:
            await transport.close()

    tokens, error = run(main())
    assert tokens == 3
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert sim.wait_for_log_line("cancel hang-later", timeout=GENEROUS)


def test_deadline_is_enforced_by_the_client_when_the_engine_cannot_answer(
    sims: SimFactory, proxies: list[FaultProxy], transport_name: str
) -> None:
    """Through a stalled proxy the engine's own deadline handling cannot reach us."""
    sim = sims(*STREAMING)
    proxy = through_proxy(sim, proxies)

    async def main() -> RpcError:
        transport = make(transport_name, proxy.address)
        try:
            responses = stream(transport, "frozen-deadline", max_tokens=100_000, timeout=1.5)
            await take(responses, 1)
            proxy.stall()
            return await expect_error(responses)
        finally:
            await transport.close()

    assert run(main()).code == StatusCode.DEADLINE_EXCEEDED


# -- keepalive -------------------------------------------------------------------------------
def test_keepalive_fails_calls_on_a_stalled_connection(
    sims: SimFactory, proxies: list[FaultProxy], transport_name: str
) -> None:
    sim = sims(*STREAMING)
    proxy = through_proxy(sim, proxies)

    async def main() -> None:
        transport = make(transport_name, proxy.address, **FAST_KEEPALIVE)
        try:
            responses = stream(transport, "stalled", max_tokens=100_000)
            await take(responses, 2)
            proxy.stall()
            error = await expect_error(responses)
            # UNAVAILABLE from keepalive, long before the call's deadline.
            assert error.code == StatusCode.UNAVAILABLE, error
            proxy.pass_through()
            tokens, complete = await eventually(lambda: drain(stream(transport, "after", 5)))
            assert (tokens, complete) == (5, True)
        finally:
            await transport.close()

    run(main())


def test_keepalive_fails_calls_on_a_frozen_engine(sims: SimFactory, transport_name: str) -> None:
    sim = sims(*STREAMING)

    async def main() -> None:
        transport = make(
            transport_name, f"127.0.0.1:{sim.port}", connect_timeout=1.0, **FAST_KEEPALIVE
        )
        try:
            responses = stream(transport, "frozen", max_tokens=100_000)
            await take(responses, 2)
            os.kill(sim.process.pid, signal.SIGSTOP)
            error = await expect_error(responses)
            assert error.code == StatusCode.UNAVAILABLE, error
            if isinstance(transport, NativeTransport):
                # The kernel still accepts TCP connections for a frozen process: connecting
                # waits for the engine's SETTINGS, so this fails after the connect timeout.
                with pytest.raises(RpcError) as refused:
                    await health(transport)
                assert refused.value.code == StatusCode.UNAVAILABLE
            os.kill(sim.process.pid, signal.SIGCONT)
            tokens, complete = await eventually(lambda: drain(stream(transport, "thawed", 5)))
            assert (tokens, complete) == (5, True)
        finally:
            await transport.close()

    run(main())


def test_silent_engine_is_pinged_politely(sims: SimFactory) -> None:
    """A connection that stays silent but answers PINGs keeps its call; PINGs back off, and an
    engine that still says too_many_pings doubles the transport's interval (as grpc does)."""
    sim = sims(*STREAMING, "--hang-after-tokens", "1")

    async def main() -> None:
        transport = NativeTransport(
            f"127.0.0.1:{sim.port}",
            TransportOptions(keepalive_interval=0.02, keepalive_timeout=0.5),
        )
        try:
            responses = stream(transport, "silent", max_tokens=10)
            await take(responses, 1)
            # grpc core's default policy (one PING per 5 minutes without data, 2 strikes) sends
            # GOAWAY too_many_pings at the fourth PING; backing off x4 it takes seconds.
            error = await expect_error(responses)
            assert error.code == StatusCode.UNAVAILABLE
            assert transport.keepalive.interval == pytest.approx(0.04)
        finally:
            await transport.close()

    run(main())


# -- resets and GOAWAY -----------------------------------------------------------------------
def test_connection_reset_mid_stream(
    sims: SimFactory, proxies: list[FaultProxy], transport_name: str
) -> None:
    sim = sims(*STREAMING)
    proxy = through_proxy(sim, proxies)

    async def main() -> None:
        transport = make(transport_name, proxy.address)
        try:
            responses = stream(transport, "reset", max_tokens=100_000)
            await take(responses, 2)
            proxy.reset()
            error = await expect_error(responses)
            assert error.code == StatusCode.UNAVAILABLE, error
            proxy.pass_through()
            tokens, complete = await eventually(lambda: drain(stream(transport, "after", 5)))
            assert (tokens, complete) == (5, True)
        finally:
            await transport.close()

    run(main())


def test_slow_link_is_not_mistaken_for_a_dead_one(
    sims: SimFactory, proxies: list[FaultProxy], transport_name: str
) -> None:
    sim = sims(*STREAMING)
    proxy = through_proxy(sim, proxies)
    proxy.slow(20_000)

    async def main() -> None:
        transport = make(transport_name, proxy.address, **FAST_KEEPALIVE)
        try:
            assert await drain(stream(transport, "slow-link", 300)) == (300, True)
        finally:
            await transport.close()

    run(main())


def test_connection_refused_is_unavailable(
    sims: SimFactory, proxies: list[FaultProxy], transport_name: str
) -> None:
    sim = sims(*STREAMING)
    proxy = through_proxy(sim, proxies)
    proxy.refuse()

    async def main() -> None:
        transport = make(transport_name, proxy.address, connect_timeout=2.0)
        try:
            with pytest.raises(RpcError) as error:
                await health(transport, timeout=5.0)
            assert error.value.code == StatusCode.UNAVAILABLE
            proxy.pass_through()
            assert await eventually(lambda: health(transport))
        finally:
            await transport.close()

    run(main())


def test_goaway_lets_streams_finish_and_moves_new_calls(
    sims: SimFactory, transport_name: str
) -> None:
    # Every connection gets GOAWAY after ~0.3 s; each stream lasts ~1 s (200 tokens, 5 ms).
    sim = sims(
        *STREAMING,
        "--max-connection-age-ms",
        "300",
        "--max-connection-age-grace-ms",
        "60000",
    )

    async def main() -> None:
        transport = make(transport_name, f"127.0.0.1:{sim.port}")
        try:
            first = stream(transport, "long-0", max_tokens=200)
            (head,) = await take(first, 1)
            later: list[asyncio.Task[tuple[int, bool]]] = []
            tokens = len(head.chunk.token_ids)  # one token unless the stream was slow to start
            async for response in first:
                if response.HasField("chunk"):
                    before = tokens
                    tokens += len(response.chunk.token_ids)
                    if tokens // 50 > before // 50:  # new calls while the first spans GOAWAYs
                        later.append(asyncio.ensure_future(drain(stream(transport, "n", 200))))
            assert tokens == 200
            assert later
            assert await asyncio.gather(*later) == [(200, True)] * len(later)
            if isinstance(transport, NativeTransport):
                assert transport.connections_opened > 1
        finally:
            await transport.close()

    run(main())


# -- stream limits ---------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [1, 4])
def test_max_concurrent_streams_is_honoured(sims: SimFactory, pool: int) -> None:
    sim = sims(*STREAMING, "--max-concurrent-streams", "2")

    async def main() -> None:
        transport = NativeTransport(f"127.0.0.1:{sim.port}")
        transport.max_connections = pool
        try:
            results = await asyncio.gather(
                *(drain(stream(transport, f"c{i}", 20)) for i in range(10))
            )
            # Over the limit the server would have refused streams (REFUSED_STREAM).
            assert results == [(20, True)] * 10
            opened = transport.connections
            assert 1 <= len(opened) <= pool
            assert all(connection.peak_streams <= 2 for connection in opened)
            assert max(connection.peak_streams for connection in opened) == 2
        finally:
            await transport.close()

    run(main())


def test_max_concurrent_streams_with_grpcio(sims: SimFactory) -> None:
    """grpc core queues calls over the limit too, but a grpc core server counts a stream a
    little past its trailers, so some calls are refused even after grpc's transparent retry:
    they must come back as back-pressure (refused), never as anything else."""
    sim = sims(*STREAMING, "--max-concurrent-streams", "2")

    async def main() -> None:
        transport = make("grpcio", f"127.0.0.1:{sim.port}")

        async def call(i: int) -> tuple[int, bool] | str:
            try:
                return await drain(stream(transport, f"c{i}", 20))
            except RpcError as exc:
                assert exc.refused, exc
                return "refused"

        try:
            assert await health(transport)
            results = await asyncio.gather(*(call(i) for i in range(10)))
            assert results.count((20, True)) + results.count("refused") == 10
            assert results.count((20, True)) >= 2
        finally:
            await transport.close()

    run(main())


def test_calls_wait_for_a_slot_within_their_deadline(sims: SimFactory) -> None:
    sim = sims(*STREAMING, "--max-concurrent-streams", "1", "--hang-after-tokens", "1")

    async def main() -> None:
        transport = NativeTransport(f"127.0.0.1:{sim.port}")
        transport.max_connections = 1
        try:
            holder = stream(transport, "holder", 5)
            await take(holder, 1)
            # The only slot is taken by a silent call: the next one waits, then times out.
            error = await expect_error(stream(transport, "waiter", 5, timeout=0.5))
            assert error.code == StatusCode.DEADLINE_EXCEEDED
            await holder.aclose()  # frees the slot
            assert await health(transport)
        finally:
            await transport.close()

    run(main())


# -- flow control and message size -----------------------------------------------------------
def test_slow_reader_holds_back_its_engine_stream(sims: SimFactory) -> None:
    sim = sims(*STREAMING, "--itl-base-ms", "0", "--tokens-per-message", "1")
    window = 16 * 1024

    async def main() -> None:
        transport = NativeTransport(f"127.0.0.1:{sim.port}")
        transport.stream_window = window
        try:
            slow = stream(transport, "slow", max_tokens=20_000)
            # With no time between tokens the first message may carry many of them.
            (first,) = await take(slow, 1)
            (connection,) = transport.connections
            (held,) = connection.streams
            # The engine fills the window, then must stop: nothing more is credited.
            await poll(lambda: held.received - held.credited > window - 200)
            # Round trips on the same connection: it is not blocked by the stalled stream, and
            # the engine has had every chance to send more than the window allows.
            for _ in range(3):
                assert await health(transport)
            assert held.received - held.credited <= window
            assert held.buffered_bytes <= window
            # Reading again credits the window back and the stream runs to its end.
            tokens, complete = await drain(slow)
            assert (len(first.chunk.token_ids) + tokens, complete) == (20_000, True)
        finally:
            await transport.close()

    run(main())


def test_message_larger_than_the_window_arrives(sims: SimFactory) -> None:
    sim = sims(*STREAMING)

    async def main() -> None:
        transport = NativeTransport(f"127.0.0.1:{sim.port}")
        transport.stream_window = 16 * 1024  # the tokenizer arrives in 512 KiB messages
        try:
            chunks = [
                chunk
                async for chunk in transport.stream(
                    TOKENIZER, common_pb2.GetTokenizerRequest(), common_pb2.GetTokenizerChunk
                )
            ]
            data = b"".join(chunk.data for chunk in chunks)
            assert len(chunks) > 1
            assert hashlib.sha256(data).hexdigest() == chunks[-1].sha256
        finally:
            await transport.close()

    run(main())


def test_max_message_size(sims: SimFactory, transport_name: str) -> None:
    sim = sims(*STREAMING)

    async def main() -> None:
        transport = make(transport_name, f"127.0.0.1:{sim.port}", max_message_bytes=64 * 1024)
        try:
            chunks = transport.stream(
                TOKENIZER, common_pb2.GetTokenizerRequest(), common_pb2.GetTokenizerChunk
            )
            error = await expect_error(chunks)
            assert error.code == StatusCode.RESOURCE_EXHAUSTED, error
            # Only that call failed: the connection goes on.
            assert await drain(stream(transport, "small", 5)) == (5, True)
        finally:
            await transport.close()

    run(main())


# -- TLS -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("herdsman-gateway")
    files = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


async def _connect_and_check(url: str, transport_name: str, **options: Any) -> str:
    engine = await connect_engine(
        url, "vllm", transport_name, timeout=10, options=TransportOptions(**options)
    )
    try:
        assert await engine.health_check(10)
        return (await engine.model_info()).served_model_name
    finally:
        await engine.close()


def test_tls(sims: SimFactory, pki: dict[str, Path], transport_name: str) -> None:
    sim = sims("--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]))
    url = f"grpcs://127.0.0.1:{sim.port}"
    assert run(_connect_and_check(url, transport_name, ca_file=str(pki["ca"]))) == "qwen3"

    async def untrusted() -> bool:
        # The system's CAs do not know the test CA: the engine is not trusted.
        engine = await connect_engine(
            url, "vllm", transport_name, options=TransportOptions(connect_timeout=5)
        )
        try:
            return await engine.health_check(5)
        finally:
            await engine.close()

    assert run(untrusted()) is False


def test_mtls(sims: SimFactory, pki: dict[str, Path], transport_name: str) -> None:
    sim = sims(
        "--tls-cert",
        str(pki["server_cert"]),
        "--tls-key",
        str(pki["server_key"]),
        "--tls-client-ca",
        str(pki["ca"]),
    )
    url = f"grpcs://127.0.0.1:{sim.port}"
    name = run(
        _connect_and_check(
            url,
            transport_name,
            ca_file=str(pki["ca"]),
            cert_file=str(pki["client_cert"]),
            key_file=str(pki["client_key"]),
        )
    )
    assert name == "qwen3"

    async def without_client_cert() -> bool:
        engine = await connect_engine(
            url,
            "vllm",
            transport_name,
            options=TransportOptions(ca_file=str(pki["ca"]), connect_timeout=5),
        )
        try:
            return await engine.health_check(5)
        finally:
            await engine.close()

    assert run(without_client_cert()) is False


# -- refusals --------------------------------------------------------------------------------
def test_grpcio_refused_stream_is_refused() -> None:
    """grpcio reports REFUSED_STREAM only in the details; the transport reads it there."""
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Stream removed (RST_STREAM (Received RST_STREAM with error code 7))",
    )
    error = rpc_error(refused)
    assert (error.code, error.refused) == (StatusCode.UNAVAILABLE, True)
    assert isinstance(engine_error(error), EngineBusy)
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="EOF"
    )
    assert not rpc_error(other).refused


def test_resource_exhausted_is_busy(sims: SimFactory, transport_name: str) -> None:
    sim = sims(*STREAMING, "--busy")

    async def main() -> None:
        engine = await connect_engine(f"grpc://127.0.0.1:{sim.port}", "vllm", transport_name)
        try:
            request = EngineRequest(
                request_id="busy", input_ids=[1, 2, 3], sampling=SamplingParams(max_tokens=5)
            )
            with pytest.raises(EngineBusy):
                async for _ in engine.generate(request):
                    pass
            assert await engine.health_check(5)  # busy is not unhealthy
        finally:
            await engine.close()

    run(main())


def test_refused_stream_is_refused(sims: SimFactory) -> None:
    """A stream the engine refuses (REFUSED_STREAM) is marked refused: back-pressure, safe to
    retry. Made to happen by hiding the engine's stream limit from the client."""
    sim = sims(*STREAMING, "--max-concurrent-streams", "1", "--hang-after-tokens", "1")

    async def main() -> None:
        transport = NativeTransport(f"127.0.0.1:{sim.port}")
        transport.max_connections = 1
        try:
            holder = stream(transport, "holder", 5)
            await take(holder, 1)
            (connection,) = transport.connections
            connection.max_streams = 10  # pretend the engine allows more
            error = await expect_error(stream(transport, "extra", 5))
            assert error.code == StatusCode.UNAVAILABLE
            assert error.refused
            assert isinstance(engine_error(error), EngineBusy)  # back-pressure, not failure
            await holder.aclose()
        finally:
            await transport.close()

    run(main())
