"""Measure what engine-sim costs: many concurrent Generate streams, the sim's tokens/s and CPU.

    python -m herdsman.sim.loadcheck --model-path models/qwen3 --concurrency 500 --max-tokens 128

Without --target it starts its own sim with every timing flag at 0 (so the sim runs flat out)
and reads the sim's CPU time from /proc; with --target it drives an existing sim (pass --pid to
still get its CPU time). Client streams can be spread over several processes with
--client-procs so the Python client is less likely to be what limits the number.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from smg_grpc_proto.generated import (
    sglang_scheduler_pb2,
    sglang_scheduler_pb2_grpc,
    vllm_engine_pb2,
    vllm_engine_pb2_grpc,
)

_LISTENING_PREFIX = "engine-sim listening on "


@dataclass(frozen=True, slots=True)
class ClientResult:
    tokens: int
    messages: int
    errors: int
    first_error: str


def _request(backend: str, request_id: str, prompt: list[int], max_tokens: int) -> object:
    if backend == "sglang":
        return sglang_scheduler_pb2.GenerateRequest(
            request_id=request_id,
            tokenized=sglang_scheduler_pb2.TokenizedInput(input_ids=prompt),
            sampling_params=sglang_scheduler_pb2.SamplingParams(
                max_new_tokens=max_tokens, ignore_eos=True
            ),
            stream=True,
        )
    return vllm_engine_pb2.GenerateRequest(
        request_id=request_id,
        tokenized=vllm_engine_pb2.TokenizedInput(input_ids=prompt),
        sampling_params=vllm_engine_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        stream=True,
    )


async def _drive(
    target: str, backend: str, worker: int, streams: int, max_tokens: int, prompt_tokens: int
) -> ClientResult:
    tokens = messages = errors = 0
    first_error = ""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = (
            sglang_scheduler_pb2_grpc.SglangSchedulerStub(channel)
            if backend == "sglang"
            else vllm_engine_pb2_grpc.VllmEngineStub(channel)
        )

        async def one(i: int) -> None:
            nonlocal tokens, messages, errors, first_error
            # Distinct prompts keep the prefix cache out of the measurement.
            seed = worker * 100_003 + i * 7919
            prompt = [1000 + (seed + k * 31) % 50_000 for k in range(prompt_tokens)]
            request = _request(backend, f"load-{worker}-{i}", prompt, max_tokens)
            try:
                async for response in stub.Generate(request):
                    messages += 1
                    if response.HasField("chunk"):
                        tokens += len(response.chunk.token_ids)
            except grpc.aio.AioRpcError as exc:
                errors += 1
                first_error = first_error or f"{exc.code().name}: {exc.details()}"

        await asyncio.gather(*(one(i) for i in range(streams)))
    return ClientResult(tokens, messages, errors, first_error)


def _client_process(
    target: str, backend: str, worker: int, streams: int, max_tokens: int, prompt_tokens: int
) -> ClientResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_drive(target, backend, worker, streams, max_tokens, prompt_tokens))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(target, backend, worker, streams, max_tokens, prompt_tokens))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn_sim(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "herdsman.sim",
        "--model-path",
        args.model_path,
        "--backend",
        args.backend,
        "--port",
        "0",
        "--ttft-base-ms",
        "0",
        "--prefill-ms-per-1k",
        "0",
        "--itl-base-ms",
        "0",
        "--itl-per-running-ms",
        "0",
        "--tokens-per-message",
        str(args.tokens_per_message),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith(_LISTENING_PREFIX):
        process.kill()
        raise RuntimeError(f"engine-sim did not start: {line!r}")
    address = line[len(_LISTENING_PREFIX) :].split()[0]
    return process, address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herdsman.sim.loadcheck")
    parser.add_argument("--model-path", default=None, help="start a flat-out sim on this model")
    parser.add_argument("--target", default=None, help="host:port of a running sim instead")
    parser.add_argument("--pid", type=int, default=None, help="pid of the --target sim")
    parser.add_argument("--backend", choices=("vllm", "sglang"), default="vllm")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--tokens-per-message", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=1)
    args = parser.parse_args(argv)
    if (args.model_path is None) == (args.target is None):
        parser.error("give exactly one of --model-path and --target")

    sim: subprocess.Popen[str] | None = None
    if args.target is None:
        sim, target = _spawn_sim(args)
        pid: int | None = sim.pid
    else:
        target, pid = args.target, args.pid
    try:
        procs = max(1, args.client_procs)
        shares = [args.concurrency // procs + (w < args.concurrency % procs) for w in range(procs)]
        jobs = [
            (target, args.backend, w, share, args.max_tokens, args.prompt_tokens)
            for w, share in enumerate(shares)
        ]
        cpu_before = process_cpu_seconds(pid) if pid else 0.0
        started = time.perf_counter()
        if procs == 1:
            results = [_client_process(*jobs[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                results = pool.starmap(_client_process, jobs)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds(pid) - cpu_before if pid else float("nan")
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)

    tokens = sum(r.tokens for r in results)
    messages = sum(r.messages for r in results)
    errors = sum(r.errors for r in results)
    print(
        f"streams={args.concurrency} max_tokens={args.max_tokens} backend={args.backend} "
        f"client_procs={procs} tokens_per_message={args.tokens_per_message}"
    )
    print(f"wall={elapsed:.2f}s tokens={tokens} messages={messages} errors={errors}")
    for result in results:
        if result.first_error:
            print(f"first error: {result.first_error}")
            break
    print(f"throughput={tokens / elapsed:,.0f} tokens/s {messages / elapsed:,.0f} messages/s")
    if pid:
        print(
            f"sim_cpu={cpu:.2f}s ({cpu / elapsed:.0%} of one core) "
            f"sim_cpu_per_1k_tokens={cpu / max(tokens, 1) * 1000 * 1000:.1f}ms"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
