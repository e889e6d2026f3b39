"""The floor: the standard workload sent straight to the engine over gRPC, no gateway.

    python -m bench.engine_floor --target 127.0.0.1:50051 -c 32 --duration 20 --engine-pid PID

Same conversations, same runner and the same measurements as bench.load, but each request is
a VllmEngine Generate call with the prompt already tokenized (the ids a gateway would send for
the chat template), stream=True. What a gateway adds is its row minus this one.
"""

from __future__ import annotations

import argparse
import itertools
import time

import grpc
from smg_grpc_proto.generated import vllm_engine_pb2, vllm_engine_pb2_grpc

from bench.runner import Outcome, add_common_arguments, main_with
from bench.workload import Turn

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class GrpcDriver:
    kind = "grpc"
    needs_ids = True

    def __init__(self, target: str, max_tokens: int) -> None:
        # One channel for every slot, as a gateway holds one (HTTP/2 multiplexes the streams).
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = vllm_engine_pb2_grpc.VllmEngineStub(self._channel)
        self._params = vllm_engine_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        self._ids = itertools.count()

    async def request(self, slot: int, turn: Turn) -> Outcome:
        assert turn.prompt_ids is not None
        request = vllm_engine_pb2.GenerateRequest(
            request_id=f"floor-{slot}-{next(self._ids)}",
            tokenized=vllm_engine_pb2.TokenizedInput(input_ids=turn.prompt_ids),
            sampling_params=self._params,
            stream=True,
        )
        outcome = Outcome()
        started = time.perf_counter()
        last = started
        completed = False
        try:
            async for response in self._stub.Generate(request):
                now = time.perf_counter()
                if response.HasField("chunk"):
                    count = len(response.chunk.token_ids)
                    if not count:
                        continue
                    if outcome.chunks:
                        outcome.gaps.append(now - last)
                    else:
                        outcome.ttft = now - started
                    last = now
                    outcome.chunks += 1
                    outcome.tokens += count
                elif response.HasField("complete"):
                    complete = response.complete
                    completed = True
                    outcome.prompt_tokens_reported = complete.prompt_tokens
                    if complete.completion_tokens:
                        outcome.tokens = complete.completion_tokens
        except grpc.aio.AioRpcError as exc:
            return outcome.fail(f"gRPC {exc.code().name}: {exc.details()}")
        if not completed:
            outcome.fail("stream ended without a complete message")
        return outcome

    async def close(self) -> None:
        await self._channel.close(grace=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_floor", description=__doc__)
    parser.add_argument("--target", required=True, help="engine address, HOST:PORT")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    result = main_with(args, lambda config: GrpcDriver(args.target, config.max_tokens))
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
