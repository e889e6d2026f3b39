"""Gateway CPU per request: a streamed Responses call against the same streamed chat completion.

    cd /work/main
    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python -m bench.responses'

One engine-sim (vLLM protocol, 5 ms per token, no EOS: every request runs to its token limit)
and one herdsman gateway (one serving process, no warm spare, SQLite storage in a temp dir).
The same conversation (~300-token prompt, --tokens output tokens) is sent as

- ``chat``: ``POST /v1/chat/completions`` with ``stream: true``;
- ``responses``: ``POST /v1/responses`` with ``stream: true, store: false``;
- ``responses+store``: the same, stored (one SQLite write per response);

at --concurrency, in rounds that alternate the three (so drift in the machine's speed hits all
alike). The gateway's CPU (utime+stime of its process tree from /proc) over each window is
divided by the requests completed in it; the median over rounds is reported with the ratio to
chat. The client runs in this process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import procstat
from bench.suite import Server

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = (
    "You are a helpful assistant for a team that runs language models in production. "
    "Answer precisely, cite the configuration options you rely on, and keep answers short. "
) * 6
QUESTION = "How should we size the KV cache of a gateway's engines for long conversations?"
MODES = ("chat", "responses", "responses+store")
_SIM_READY = re.compile(r"engine-sim listening on (\S+):(\d+)")
_GATEWAY_READY = re.compile(r"herdsman listening on http://(\S+):(\d+)")


def body(mode: str, tokens: int) -> tuple[str, dict]:
    if mode == "chat":
        return "/v1/chat/completions", {
            "model": "qwen3",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
            ],
            "max_tokens": tokens,
            "stream": True,
        }
    return "/v1/responses", {
        "model": "qwen3",
        "instructions": SYSTEM,
        "input": QUESTION,
        "max_output_tokens": tokens,
        "stream": True,
        "store": mode == "responses+store",
    }


async def one(client: httpx.AsyncClient, path: str, payload: dict) -> int:
    """Read one stream to its end; the number of SSE data lines."""
    lines = 0
    async with client.stream("POST", path, json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            lines += line.startswith("data: ")
    return lines


async def window(base: str, mode: str, requests: int, concurrency: int, tokens: int) -> int:
    path, payload = body(mode, tokens)
    queue = list(range(requests))
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal done
            while queue:
                queue.pop()
                if await one(client, path, payload) > 0:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def start_sim_and_gateway(
    out: Path, sim_args: list[str], gateway_args: list[str]
) -> tuple[Server, Server, str]:
    """An engine-sim (qwen3, vLLM protocol) and one herdsman gateway process before it (no warm
    spare); the gateway's base URL."""
    sim = Server(
        "sim",
        [
            sys.executable,
            "-m",
            "herdsman.sim",
            "--model-path",
            "models/qwen3",
            "--port",
            "0",
            *sim_args,
        ],
        out / "sim.log",
    )
    host, port = sim.wait_for_line(_SIM_READY).groups()
    gateway = Server(
        "herdsman",
        [
            *(sys.executable, "-m", "herdsman", "serve", "--port", "0", "--workers", "1"),
            *("--no-warm-spare", "--worker", f"grpc://{host}:{port}", "--log-level", "warning"),
            *gateway_args,
        ],
        out / "gateway.log",
    )
    ghost, gport = gateway.wait_for_line(_GATEWAY_READY).groups()
    return sim, gateway, f"http://{ghost}:{gport}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per window")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-responses-"))
    sim, gateway, base = start_sim_and_gateway(
        out,
        ["--ttft-base-ms", "5", "--itl-base-ms", str(args.itl_ms), "--itl-per-running-ms", "0"],
        ["--storage", f"sqlite:///{out / 'store.db'}"],
    )
    try:
        for mode in MODES:  # warm-up: caches, connections, the first SQLite write
            asyncio.run(window(base, mode, args.concurrency * 2, args.concurrency, args.tokens))
        per_request: dict[str, list[float]] = {m: [] for m in MODES}
        for round_ in range(args.rounds):
            for mode in MODES:
                before = procstat.tree_cpu_ms(gateway.pid)
                started = time.perf_counter()
                done = asyncio.run(window(base, mode, args.requests, args.concurrency, args.tokens))
                elapsed = time.perf_counter() - started
                cpu = procstat.tree_cpu_ms(gateway.pid) - before
                per_request[mode].append(cpu / max(done, 1))
                print(
                    f"round {round_ + 1} {mode:16s} {done} requests in {elapsed:.1f} s, "
                    f"gateway CPU {cpu / max(done, 1):.2f} ms/request",
                    flush=True,
                )
        chat = statistics.median(per_request["chat"])
        result = {
            m: {
                "median_ms": statistics.median(v),
                "runs_ms": v,
                "vs_chat": statistics.median(v) / chat,
            }
            for m, v in per_request.items()
        }
        print("\n| mode | gateway CPU ms/request (median of rounds) | × chat |\n|---|---|---|")
        for mode in MODES:
            r = result[mode]
            print(f"| {mode} | {r['median_ms']:.2f} | {r['vs_chat']:.2f}× |")
        (out / "result.json").write_text(
            json.dumps({"args": vars(args), "result": result}, indent=1)
        )
        print(f"\nresults: {out}")
    finally:
        gateway.proc.terminate()
        sim.proc.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
