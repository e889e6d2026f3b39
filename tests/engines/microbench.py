"""Client CPU per streamed message, native vs grpcio.

Not a test; run ``.venv/bin/python tests/engines/microbench.py``.

End to end: one engine-sim in another process streams many one-token messages as fast as it
can; this process measures its own CPU time (``time.process_time``) while reading them through a
transport, so the number is the client's cost per message, whatever the sim's speed (but the two
processes share the machine's cores, so a busy machine adds noise).

``--synthetic``: the native client's receive path alone, fed recorded HTTP/2 frames from memory
(16 streams, one GenerateResponse chunk per DATA frame) with no socket and no server: the most
stable number for comparing versions of http2.py/stream.py.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from smg_grpc_proto.generated import vllm_engine_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.sim.simproc import start_sim

from herdsman.engines.transport import transport_class

ZERO_TIMING = ("--ttft-base-ms", "0", "--prefill-ms-per-1k", "0", "--itl-base-ms", "0")
ZERO_TIMING += ("--itl-per-running-ms", "0", "--max-model-len", "1000000")


def _request(i: int, tokens: int) -> pb.GenerateRequest:
    params = pb.SamplingParams(max_tokens=tokens, ignore_eos=True)
    return pb.GenerateRequest(
        request_id=f"bench-{i}",
        tokenized=pb.TokenizedInput(input_ids=[1, 2, 3]),
        sampling_params=params,
        stream=True,
    )


async def _run(transport_name: str, port: int, streams: int, tokens: int) -> float:
    transport = transport_class(transport_name)(f"127.0.0.1:{port}")

    async def one(i: int) -> int:
        count = 0
        async for _ in transport.stream(
            "/vllm.grpc.engine.VllmEngine/Generate", _request(i, tokens), pb.GenerateResponse, 600
        ):
            count += 1
        return count

    await one(-1)  # connect and warm up
    cpu = time.process_time()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    cpu = time.process_time() - cpu
    await transport.close()
    return cpu / sum(counts) * 1e6


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _frames(streams: int, messages: int) -> tuple[bytes, list[bytes], bytes]:
    import hpack

    from herdsman.engines.transport.frames import frame

    chunk = pb.GenerateStreamChunk(token_ids=[1234], prompt_tokens=10, completion_tokens=5)
    message = pb.GenerateResponse(chunk=chunk).SerializeToString()
    body = len(message).to_bytes(5, "big") + message
    encoder = hpack.Encoder()
    settings = frame(0x4, 0, 0, (3).to_bytes(2, "big") + (1000).to_bytes(4, "big"))
    ids = [1 + 2 * i for i in range(streams)]
    reads = [b"".join(frame(0x0, 0, sid, body) for sid in ids) for _ in range(messages)]
    trailers = b"".join(frame(0x1, 0x5, sid, encoder.encode([("grpc-status", "0")])) for sid in ids)
    return settings, reads, trailers


async def _synthetic(streams: int, messages: int) -> float:
    from herdsman.engines.transport.http2 import Http2Connection
    from herdsman.engines.transport.keepalive import Keepalive, KeepalivePolicy

    settings, reads, trailers = _frames(streams, messages)
    connection = Http2Connection(
        max_message=1 << 28, keepalive=Keepalive(KeepalivePolicy(20, 10)), on_change=bool
    )
    connection.connection_made(_NullTransport())  # type: ignore[arg-type]
    connection.data_received(settings)
    calls = [await connection.start_call(b"", b"") for _ in range(streams)]

    async def consume(call: Any) -> int:
        count, parse = 0, pb.GenerateResponse.FromString
        while (data := await call.read()) is not None:
            parse(data)
            count += 1
        return count

    readers = [asyncio.ensure_future(consume(call)) for call in calls]
    await asyncio.sleep(0)
    cpu = time.process_time()
    for data in reads:
        connection.data_received(data)
        await asyncio.sleep(0)  # the readers take what arrived, as they would between reads
    connection.data_received(trailers)
    total = sum(await asyncio.gather(*readers))
    return (time.process_time() - cpu) / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args()
    if args.synthetic:
        import uvloop

        samples = [uvloop.run(_synthetic(args.streams, 3000)) for _ in range(args.rounds)]
        print(
            f"native receive path per message: median {statistics.median(samples):.2f} us "
            f"(min {min(samples):.2f}; {args.rounds} rounds of {args.streams} x 3000 messages)"
        )
        return
    sim = start_sim(*ZERO_TIMING, abort_log=Path("/dev/null"))
    try:
        import uvloop

        for name in ("native", "grpcio"):
            samples = [
                uvloop.run(_run(name, sim.port, args.streams, args.tokens))
                for _ in range(args.rounds)
            ]
            print(
                f"{name:7s} client CPU per message: median {statistics.median(samples):.2f} us "
                f"(min {min(samples):.2f}, max {max(samples):.2f}; {args.rounds} rounds of "
                f"{args.streams} x {args.tokens} messages)"
            )
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
