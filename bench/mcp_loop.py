"""Gateway CPU per MCP loop iteration in /v1/responses.

    cd /work/main
    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python -m bench.mcp_loop'

One engine-sim that answers every turn with one call of the MCP tool ``add`` (Qwen3's
``<tool_call>`` format, then EOS), one herdsman gateway process (no warm spare,
``--storage none``, ``--allow-private-mcp-urls``), and a real MCP server (tests/mcp/mcp_app.py,
streamable HTTP). Two requests, each sent --requests times at --concurrency, alternating in
rounds:

- ``loop``: the MCP tool with ``max_tool_calls: 3``: the gateway lists the tools, runs three
  turns whose calls it executes, and a fourth whose call is over the limit (incomplete);
- ``single``: the same request with ``max_tool_calls: 1``: one call runs, the second turn's is
  over the limit.

The gateway's CPU (its process tree; the MCP server and the engine are other processes) per
request, ``(loop - single) / 2``, is the gateway's cost of one loop iteration: running a call
through the session pool, appending the results, re-rendering and re-tokenizing the prompt,
and one more generation. The target is at most 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import procstat
from bench.responses import start_sim_and_gateway

ROOT = Path(__file__).resolve().parent.parent
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def start_mcp(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = out / "mcp.port"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/mcp/mcp_app.py"),
            "streamable_http",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the MCP server did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{int(port_file.read_text())}/mcp"


async def window(base: str, payload: dict, requests: int, concurrency: int) -> int:
    done = 0
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            while queue:
                queue.pop()
                reply = await client.post("/v1/responses", json=payload)
                reply.raise_for_status()
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-mcp-loop-"))
    mcp, mcp_url = start_mcp(out)
    sim, gateway, base = start_sim_and_gateway(
        out,
        ["--ttft-base-ms", "1", "--itl-base-ms", "1", "--response-text", CALL],
        ["--model-path", "models/qwen3", "--storage", "none", "--allow-private-mcp-urls"],
    )
    try:
        tool = {
            "type": "mcp",
            "server_label": "calc",
            "server_url": mcp_url,
            "require_approval": "never",
        }
        bodies = {
            mode: {
                "model": "qwen3",
                "input": "What is 2 + 3?",
                "tools": [tool],
                "max_tool_calls": calls,
                "store": False,
            }
            for mode, calls in (("loop", 3), ("single", 1))
        }
        # "single" runs its one call too: loop - single = two iterations.
        iterations = 2
        for payload in bodies.values():
            asyncio.run(window(base, payload, 20, args.concurrency))
        cpu: dict[str, list[float]] = {m: [] for m in bodies}
        for round_ in range(args.rounds):
            for mode, payload in bodies.items():
                before = procstat.tree_cpu_ms(gateway.pid)
                done = asyncio.run(window(base, payload, args.requests, args.concurrency))
                per = (procstat.tree_cpu_ms(gateway.pid) - before) / max(done, 1)
                cpu[mode].append(per)
                print(f"round {round_ + 1} {mode:6s} {per:.2f} ms/request", flush=True)
        loop, single = statistics.median(cpu["loop"]), statistics.median(cpu["single"])
        print(
            f"\nloop (3 calls, 4 turns): {loop:.2f} ms/request; single (1 call, 2 turns): "
            f"{single:.2f} ms/request"
        )
        print(f"gateway CPU per loop iteration: {(loop - single) / iterations:.2f} ms")
    finally:
        gateway.proc.terminate()
        sim.proc.terminate()
        mcp.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
