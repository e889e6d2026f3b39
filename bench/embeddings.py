"""Gateway CPU per embeddings batch against the CPU of tokenizing the batch alone.

    cd /work/main
    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python -m bench.embeddings'

One engine-sim serving an embedding model (vLLM protocol, ``--pooling embed``, 1024 dimensions,
the Qwen3 tokenizer: Qwen3-Embedding's) and one herdsman gateway process (no warm
spare). Each request embeds a batch of --batch short texts (8-20 words), all distinct across the
run so that the tokenizer's exact-match cache never answers. The gateway's CPU (utime+stime of
its process tree, /proc) over each window is divided by the batches completed in it.

The baseline is what the same batches cost to tokenize and nothing else: the gateway's tokenizer
(the same ModelTokenizer, backend and settings, loaded here) encoding every text of every batch,
measured with this process's CPU clock. The ratio is gateway CPU per batch / tokenizing CPU per
batch; the issue's target is <= 1.5. Both float and base64 responses are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import procstat
from bench.responses import start_sim_and_gateway
from herdsman.tokenizer import load_model_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "qwen3"
SENTENCE = (
    "the model serves many requests each day and every request carries a short text that "
    "must be embedded quickly so the search index stays fresh for users"
)
WORDS = SENTENCE.split()


def texts(count: int, rng: random.Random) -> list[str]:
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + f" {i}"
        for i in range(count)
    ]


async def window(base: str, batches: list[list[str]], concurrency: int, fmt: str) -> int:
    done = 0
    queue = list(batches)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal done
            while queue:
                batch = queue.pop()
                response = await client.post(
                    "/v1/embeddings", json={"input": batch, "encoding_format": fmt}
                )
                response.raise_for_status()
                if len(response.json()["data"]) == len(batch):
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def tokenize_cpu_ms(batches: list[list[str]]) -> float:
    """CPU per batch of encoding its texts with the gateway's tokenizer (fresh, no cache)."""
    tokenizer = load_model_tokenizer(MODEL, None)
    started = time.process_time()
    for batch in batches:
        for text in batch:
            tokenizer.encode(text, add_special_tokens=True)
    return (time.process_time() - started) * 1000 / len(batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="per window")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    out = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    sim, gateway, base = start_sim_and_gateway(
        out,
        ["--pooling", "embed", "--embedding-dim", str(args.dim)],
        ["--model-path", str(MODEL)],
    )
    try:
        warm = [texts(args.batch, rng) for _ in range(args.concurrency * 2)]
        asyncio.run(window(base, warm, args.concurrency, "float"))
        gateway_ms: dict[str, list[float]] = {"float": [], "base64": []}
        tokenize_ms: list[float] = []
        for round_ in range(args.rounds):
            for fmt in ("float", "base64"):
                batches = [texts(args.batch, rng) for _ in range(args.batches)]
                tokenize_ms.append(tokenize_cpu_ms(batches))
                before = procstat.tree_cpu_ms(gateway.pid)
                started = time.perf_counter()
                done = asyncio.run(window(base, batches, args.concurrency, fmt))
                elapsed = time.perf_counter() - started
                cpu = (procstat.tree_cpu_ms(gateway.pid) - before) / max(done, 1)
                gateway_ms[fmt].append(cpu)
                print(
                    f"round {round_ + 1} {fmt:6s} {done} batches in {elapsed:.1f} s: gateway "
                    f"{cpu:.2f} ms/batch, tokenizing alone {tokenize_ms[-1]:.2f} ms/batch",
                    flush=True,
                )
        base_ms = statistics.median(tokenize_ms)
        result = {
            "tokenize_ms_per_batch": base_ms,
            **{
                fmt: {
                    "gateway_ms_per_batch": statistics.median(v),
                    "runs_ms": v,
                    "ratio": statistics.median(v) / base_ms,
                }
                for fmt, v in gateway_ms.items()
            },
        }
        print(f"\ntokenizing {args.batch} texts alone: {base_ms:.2f} ms CPU per batch")
        print("| encoding_format | gateway CPU ms/batch (median) | × tokenizing alone |")
        print("|---|---|---|")
        for fmt in ("float", "base64"):
            r = result[fmt]
            print(f"| {fmt} | {r['gateway_ms_per_batch']:.2f} | {r['ratio']:.2f}× |")
        (out / "result.json").write_text(json.dumps({"args": vars(args), **result}, indent=1))
        print(f"\nresults: {out}")
    finally:
        gateway.proc.terminate()
        sim.proc.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
