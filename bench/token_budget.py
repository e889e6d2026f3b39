"""What each piece of a streamed request costs herdsman, measured alone, against the CPU budget of
issue 17's target (gateway CPU per request ≤ 0.5× SMG's on the standard workload).

    python -m bench.token_budget [--smg-ms 6.6] [--floor-us 8.0] [--profile RAW --cpu-ms 5.9]

Every piece is herdsman's own code as built, called in a tight loop in one process (no sockets,
no event loop wake-ups, warm caches): the cheapest it can ever be inside a gateway. Per token:
an engine message's HTTP/2 frame and gRPC message split (the connection's receive callback, the
listener taking it), the chunk's read (C), the detokenizer's step (fastokens), the SSE frame
and the ITL histogram. Per request: the chat template (jinja2, sandboxed as transformers does),
the prompt's encoding (fastokens), the body's JSON decode and the engine request's serialization,
over the standard workload's conversations (bench/workload.py).

The budget: half of SMG's CPU per request (``--smg-ms``, from the same machine's run), less 128
times the relay floor's cost per token (``--floor-us``, from ``python -m bench.relay_floor``:
the epoll wake-up, the engine read and the client write any Python gateway pays per token).
What is left must pay for everything below; the table says how much of it these pieces alone
take, before any of the glue between them (the generation step, the response's stages, the
HTTP/1.1 request, routing, metrics) that the profile in docs/benchmarks.md shows.

``--profile``: a py-spy profile of the serving process under the standard workload
(``py-spy record --native -f raw -p PID``, with herdsman serve --workers 1 before an engine-sim
and bench.load at c=64), and ``--cpu-ms`` the CPU per request bench.load measured in that run:
the table then also says what each piece costs there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec

from bench.workload import Workload
from herdsman.api.sse import ChunkFrames
from herdsman.engines.base import EngineRequest, SamplingParams
from herdsman.engines.grpc_engine import GenerateDecoder
from herdsman.engines.transport.base import TAKEN
from herdsman.engines.transport.frames import DATA, frame
from herdsman.engines.transport.http2 import Http2Connection
from herdsman.engines.transport.keepalive import Keepalive, KeepalivePolicy
from herdsman.engines.transport.native import NativeTransport
from herdsman.engines.transport.stream import STREAM_WINDOW, Http2Stream
from herdsman.engines.vllm import VllmEngine
from herdsman.observability import METRICS
from herdsman.pipeline.prepare import render_chat_prompt
from herdsman.protocol.openai import ChatCompletionRequest
from herdsman.tokenizer.loader import load_model_tokenizer

TOKENS = 128  # the standard workload's output per request


def per_call_us(run: Callable[[int], None], calls: int, repeats: int = 7) -> float:
    """Microseconds per call: ``run(calls)`` timed ``repeats`` times, the best kept (the cost
    without the machine's interruptions)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(calls)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def token_message(token_id: int, count: int) -> bytes:
    response = VllmEngine.pb2.GenerateResponse()
    chunk = response.chunk
    chunk.token_ids.append(token_id)
    chunk.prompt_tokens = 2400
    chunk.completion_tokens = count
    chunk.cached_tokens = 2048
    return response.SerializeToString()


def receiving_stream(messages: list[bytes]) -> tuple[Http2Connection, list[bytes], list[bytes]]:
    """An engine connection with one call waiting on the push path (its listener takes every
    message, as the generation's does), the DATA frames that carry ``messages`` to it, and the
    list the listener appends what it took to. Needs a running event loop."""
    connection = Http2Connection(
        max_message=1 << 24,
        keepalive=Keepalive(KeepalivePolicy(interval=0.0, timeout=20.0)),
        on_change=lambda slot_only: None,
    )
    stream_id = 1
    stream = Http2Stream(connection, stream_id, 65535, STREAM_WINDOW, 1 << 24)
    connection._streams[stream_id] = stream
    taken: list[bytes] = []

    def listener(message: bytes) -> int:
        if len(taken) < 64:  # kept only for the check that the push path is what runs
            taken.append(message)
        return TAKEN

    stream.listener = listener
    stream._waiter = asyncio.get_running_loop().create_future()  # the caller waits: push
    frames = [frame(DATA, 0, stream_id, len(m).to_bytes(5, "big") + m) for m in messages]
    return connection, frames, taken


async def _http2_receive_us(messages: list[bytes]) -> float:
    """The engine connection's receive callback for one DATA frame holding one token message,
    down to the stream's listener taking it (the push path's entry)."""
    connection, frames, _ = receiving_stream(messages)
    cycle = itertools.cycle(frames)
    receive = connection.data_received

    def run(calls: int) -> None:
        for _ in range(calls):
            receive(next(cycle))

    return per_call_us(run, 20_000)


def measure(model_dir: Path, conversations: int) -> dict[str, float]:
    model = load_model_tokenizer(model_dir)
    workload = Workload(model_dir / "tokenizer.json")
    turns = [t for k in range(conversations) for t in workload.conversation(k)]
    reply_ids = [
        i
        for _, turn_list in (workload.plan(k) for k in range(4))
        for _, r in turn_list
        for i in r.ids
    ]
    messages = [token_message(t, n + 1) for n, t in enumerate(reply_ids[:256])]
    results: dict[str, float] = {}

    results["http2_receive"] = asyncio.run(_http2_receive_us(messages))

    plain = GenerateDecoder(VllmEngine.pb2.GenerateResponse, VllmEngine.chunk_fields).plain
    cycle = itertools.cycle(messages)
    results["chunk_read"] = per_call_us(lambda n: [plain(next(cycle)) for _ in range(n)], 50_000)

    def detokenize(calls: int) -> None:
        detok = model.detokenizer(context=reply_ids[:8])
        push = detok.push
        ids = itertools.cycle(reply_ids)
        for _ in range(calls):
            push((next(ids),))

    results["detokenize"] = per_call_us(detokenize, 20_000)

    frames = ChunkFrames("chatcmpl-0123456789abcdef", 1_764_000_000, "qwen3", chat=True)
    pieces = itertools.cycle([model.decode([i]) for i in reply_ids[:256]])
    results["sse_frame"] = per_call_us(
        lambda n: [frames.text(0, next(pieces)) for _ in range(n)], 50_000
    )
    observe = METRICS.itl.observe
    results["itl_metric"] = per_call_us(lambda n: [observe(0.011) for _ in range(n)], 50_000)

    bodies = [
        msgspec.json.encode(
            {
                "model": "qwen3",
                "messages": t.messages,
                "max_tokens": TOKENS,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
        )
        for t in turns
    ]
    decoder = msgspec.json.Decoder(ChatCompletionRequest)
    template = model.chat_template
    assert template is not None
    requests = [decoder.decode(body) for body in bodies]
    served = SimpleNamespace(tokenizer=model)  # what render_chat_prompt reads of a ServedModel
    conv = itertools.cycle(requests)
    results["template"] = per_call_us(
        lambda n: [render_chat_prompt(served, next(conv)) for _ in range(n)],  # type: ignore[arg-type]
        len(turns) * 2,
        3,
    )
    texts = itertools.cycle([template.render(t.messages) for t in turns])
    encode = model.encode
    results["encode"] = per_call_us(
        lambda n: [encode(next(texts), add_special_tokens=False) for _ in range(n)],
        len(turns) * 2,
        3,
    )
    body_cycle = itertools.cycle(bodies)
    results["body_decode"] = per_call_us(
        lambda n: [decoder.decode(next(body_cycle)) for _ in range(n)], len(turns) * 2, 3
    )
    engine = VllmEngine("127.0.0.1:1", NativeTransport("127.0.0.1:1"))
    prompts = itertools.cycle(
        [encode(template.render(t.messages), add_special_tokens=False) for t in turns]
    )
    sampling = SamplingParams(max_tokens=TOKENS, ignore_eos=True, temperature=0.7)

    def engine_request(calls: int) -> None:
        for _ in range(calls):
            engine._generate_wire(
                EngineRequest(
                    request_id="chatcmpl-0123",
                    input_ids=next(prompts),
                    sampling=sampling,
                    stream=True,
                )
            ).SerializeToString()

    results["engine_request"] = per_call_us(engine_request, len(turns) * 2, 3)
    results["prompt_tokens"] = statistics.mean(t.prompt_tokens for t in turns)
    return results


PER_TOKEN = {
    "http2_receive": "HTTP/2 DATA frame and gRPC message split, to the listener",
    "chunk_read": "the streamed chunk read (C)",
    "detokenize": "detokenizer step (fastokens decode)",
    "sse_frame": "SSE frame",
    "itl_metric": "ITL histogram",
}
PER_REQUEST = {
    "template": "chat template: the conversation and its render (jinja2, sandboxed)",
    "encode": "prompt encoding (fastokens)",
    "body_decode": "request body JSON decode (msgspec)",
    "engine_request": "engine request serialization",
}


def _piece_of(python_frames: list[str]) -> str | None:
    """Which measured piece a py-spy stack's innermost herdsman frames belong to."""
    stack = ";".join(python_frames)
    last = python_frames[-1] if python_frames else ""
    if "render_chat_prompt" in stack:
        return "template"
    if "fast_backend.py" in last:
        return "encode"
    if "detokenizer.py" in last:
        return "detokenize"
    if "sse.py" in last:
        return "sse_frame"
    if "GenerateDecoder.plain" in last:
        return "chunk_read"
    if "transport/http2.py" in last and "_flush" not in last and "_write" not in last:
        return "http2_receive"
    if "transport/stream.py" in last and "read (" not in last:
        return "http2_receive"
    if "metrics.py" in last and "observe" in last:
        return "itl_metric"  # every histogram's observe, the ITL's among them
    return None


def in_server_ms(profile: Path, cpu_ms: float) -> dict[str, float]:
    """Each piece's share of a py-spy raw profile (``py-spy record --native -f raw`` of the
    serving process under the standard workload) times the CPU per request of that run; the
    idle waits of the loop and the idle encode thread are not CPU and are left out."""
    counts: dict[str, int] = {}
    busy = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "epoll_pwait" in frames[-1] or "_worker (concurrent" in stack:
            continue
        busy += int(count)
        piece = _piece_of([f for f in frames if ".py:" in f])
        if piece is not None:
            counts[piece] = counts.get(piece, 0) + int(count)
    return {piece: cpu_ms * n / busy for piece, n in counts.items()}


def report(
    results: dict[str, float],
    smg_ms: float,
    floor_us: float,
    server: dict[str, float] | None = None,
) -> str:
    budget_ms = smg_ms / 2
    floor_ms = floor_us * TOKENS / 1000
    left_ms = budget_ms - floor_ms
    lines = [
        f"standard workload: {TOKENS} tokens a request, prompts of "
        f"{results['prompt_tokens']:.0f} tokens on average",
        f"budget: 0.5 x SMG's {smg_ms:.2f} ms = {budget_ms:.2f} ms a request; the relay floor "
        f"takes {floor_us:.1f} us x {TOKENS} = {floor_ms:.2f} ms; left: {left_ms:.2f} ms",
        "",
        "| piece | alone | per request | in the server |",
        "|---|---|---|---|",
    ]
    server = server or {}

    def there(key: str, ms: float) -> str:
        if key not in server:
            return "–"
        return f"{server[key]:.2f} ms ({server[key] / ms:.1f}x)"

    total = 0.0
    for key, label in PER_TOKEN.items():
        ms = results[key] * TOKENS / 1000
        total += ms
        lines.append(
            f"| {label} | {results[key]:.2f} us a token | {ms:.2f} ms | {there(key, ms)} |"
        )
    for key, label in PER_REQUEST.items():
        ms = results[key] / 1000
        total += ms
        lines.append(
            f"| {label} | {results[key]:.0f} us a request | {ms:.2f} ms | {there(key, ms)} |"
        )
    in_server = sum(server.values())
    lines.append(
        f"| **these pieces** | | **{total:.2f} ms** ({100 * total / left_ms:.0f}% "
        f"of what the budget leaves) | "
        + (f"**{in_server:.2f} ms** ({in_server / total:.1f}x) |" if server else "– |")
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/qwen3"))
    parser.add_argument(
        "--smg-ms",
        type=float,
        default=6.6,
        help="SMG's CPU ms per request at c=64 on this machine (bench/run.sh)",
    )
    parser.add_argument(
        "--floor-us",
        type=float,
        default=8.0,
        help="the relay floor's CPU us per token at c=64 (bench.relay_floor)",
    )
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument(
        "--profile",
        type=Path,
        help="a py-spy raw profile of the serving process under the standard workload, to set "
        "what each piece costs there beside what it costs alone",
    )
    parser.add_argument(
        "--cpu-ms", type=float, help="herdsman's CPU ms per request in the profiled run"
    )
    args = parser.parse_args()
    if args.profile is not None and args.cpu_ms is None:
        parser.error("--profile needs --cpu-ms")
    server = in_server_ms(args.profile, args.cpu_ms) if args.profile is not None else None
    print(report(measure(args.model, args.conversations), args.smg_ms, args.floor_us, server))


if __name__ == "__main__":
    main()
