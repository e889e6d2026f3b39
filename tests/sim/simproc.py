"""Run engine-sim as a real subprocess and talk to it over real gRPC."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import grpc
from smg_grpc_proto.generated import (
    sglang_scheduler_pb2,
    sglang_scheduler_pb2_grpc,
    vllm_engine_pb2,
    vllm_engine_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[2]
QWEN3 = REPO / "models" / "qwen3"
LLAMA3 = REPO / "models" / "llama3"
BACKENDS = ("vllm", "sglang")
# Fast but not zero, so streams stay observable mid-flight.
FAST_TIMING = (
    "--ttft-base-ms",
    "1",
    "--prefill-ms-per-1k",
    "0",
    "--itl-base-ms",
    "1",
    "--itl-per-running-ms",
    "0",
)
_START_TIMEOUT_S = 20.0


class SimFactory(Protocol):
    def __call__(self, *flags: str, backend: str = ..., model: Path = ...) -> SimProcess: ...


def proto(backend: str) -> ModuleType:
    return sglang_scheduler_pb2 if backend == "sglang" else vllm_engine_pb2


@dataclass
class SimProcess:
    process: subprocess.Popen[str]
    port: int
    backend: str
    abort_log: Path
    listening_line: str
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def pb(self) -> ModuleType:
        return proto(self.backend)

    def stub(self) -> Any:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self._channels.append(channel)
        if self.backend == "sglang":
            return sglang_scheduler_pb2_grpc.SglangSchedulerStub(channel)
        return vllm_engine_pb2_grpc.VllmEngineStub(channel)

    def abort_log_lines(self) -> list[str]:
        if not self.abort_log.exists():
            return []
        return self.abort_log.read_text().splitlines()

    def wait_for_log_line(self, line: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.abort_log_lines():
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> int | None:
        for channel in self._channels:
            channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def start_sim(
    *flags: str, backend: str = "vllm", model: Path = QWEN3, abort_log: Path
) -> SimProcess:
    command = [
        sys.executable,
        "-m",
        "herdsman.sim",
        "--model-path",
        str(model),
        "--backend",
        backend,
        "--port",
        "0",
        "--abort-log",
        str(abort_log),
        *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            line = pool.submit(process.stdout.readline).result(timeout=_START_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            process.kill()
            raise
    line = line.strip()
    prefix = "engine-sim listening on 127.0.0.1:"
    if not line.startswith(prefix):
        process.kill()
        raise RuntimeError(f"unexpected first line from engine-sim: {line!r}")
    port = int(line[len(prefix) :].split()[0])
    return SimProcess(process, port, backend, abort_log, line)


def generate_request(
    backend: str,
    request_id: str,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int | None = None,
    min_tokens: int = 0,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    n: int = 1,
    stream: bool = True,
    logprobs: int | None = None,
    data_parallel_rank: int | None = None,
) -> Any:
    pb = proto(backend)
    if backend == "sglang":
        params = pb.SamplingParams(
            min_new_tokens=min_tokens,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            n=n,
        )
        if max_tokens is not None:
            params.max_new_tokens = max_tokens
        message = pb.GenerateRequest(
            request_id=request_id,
            tokenized=pb.TokenizedInput(input_ids=prompt_ids),
            sampling_params=params,
            stream=stream,
            return_logprob=logprobs is not None,
            top_logprobs_num=logprobs or 0,
        )
        if data_parallel_rank is not None:
            message.data_parallel_rank = data_parallel_rank
        return message
    params = pb.SamplingParams(
        min_tokens=min_tokens, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, n=n
    )
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if logprobs is not None:
        params.logprobs = logprobs
    message = pb.GenerateRequest(
        request_id=request_id,
        tokenized=pb.TokenizedInput(input_ids=prompt_ids),
        sampling_params=params,
        stream=stream,
    )
    if data_parallel_rank is not None:
        message.data_parallel_rank = data_parallel_rank
    return message


def split_responses(responses: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(chunks, completes) of a finished Generate stream."""
    chunks = [r.chunk for r in responses if r.WhichOneof("response") == "chunk"]
    completes = [r.complete for r in responses if r.WhichOneof("response") == "complete"]
    return chunks, completes


def take(iterator: Iterator[Any], count: int) -> list[Any]:
    return [next(iterator) for _ in range(count)]
