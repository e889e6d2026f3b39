"""The benchmark harness's own logic: HTTP/SSE parsing, the workload, CPU accounting, the runner.

tests/bench has no __init__.py on purpose: as a package it would be named `bench` and shadow
the harness it tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import ChunkedDecoder, HttpDriver, SseReader  # noqa: E402
from bench.procstat import tree_cpu_ms, tree_rss  # noqa: E402
from bench.runner import LoadConfig, Outcome, percentiles, run_load  # noqa: E402
from bench.workload import MAX_PROMPT_TOKENS, Turn, Workload  # noqa: E402

TOKENIZER = ROOT / "models/qwen3/tokenizer.json"


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(TOKENIZER, seed=0)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out = b""
    pos = 0
    for i, size in enumerate(sizes):
        part = body[pos : pos + size]
        pos += size
        ext = b";ext=1" if i == 0 else b""
        out += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
    if pos < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:])
    return out + b"0\r\n\r\n"


def sse_stream(tokens: int, *, reasoning: bool = False) -> bytes:
    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    key = "reasoning_content" if reasoning else "content"
    out = event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    for i in range(tokens):
        out += event({"choices": [{"delta": {key: f" w{i}"}, "finish_reason": None}]})
    out += event({"choices": [{"delta": {}, "finish_reason": "length"}]})
    out += event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": tokens}})
    return out + b"data: [DONE]\n\n"


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100_000])
def test_chunked_decoder_reassembles_any_split(step: int) -> None:
    body = sse_stream(5)
    wire = chunked(body, [10, 1, 200, 33])
    decoder = ChunkedDecoder()
    got = b"".join(decoder.feed(wire[i : i + step]) for i in range(0, len(wire), step))
    assert got == body
    assert decoder.done


def test_chunked_decoder_waits_for_the_terminating_chunk() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhello\r\n") == b"hello"
    assert not decoder.done
    decoder.feed(b"0\r\n")
    assert not decoder.done
    decoder.feed(b"\r\n")
    assert decoder.done


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_sse_reader_counts_content_chunks_and_usage(step: int) -> None:
    outcome = Outcome()
    reader = SseReader(outcome, started=0.0)
    stream = sse_stream(4).replace(b"\n", b"\r\n")  # CRLF line ends are legal SSE too
    for n, i in enumerate(range(0, len(stream), step)):
        reader.feed(stream[i : i + step], now=float(n + 1))
    assert reader.done and reader.usage_seen and outcome.ok
    assert outcome.chunks == 4
    assert len(outcome.gaps) == 3
    assert outcome.tokens == 4
    assert outcome.prompt_tokens_reported == 7
    assert outcome.ttft > 0


def test_sse_reader_flags_error_events_and_reasoning() -> None:
    outcome = Outcome()
    reader = SseReader(outcome, started=0.0)
    reader.feed(sse_stream(2, reasoning=True), now=1.0)
    assert outcome.ok and outcome.chunks == 2 and outcome.reasoning_chunks == 2

    failed = Outcome()
    reader = SseReader(failed, started=0.0)
    reader.feed(b'event: error\ndata: {"error": {"message": "engine died"}}\n\n', now=1.0)
    assert not failed.ok and "engine died" in failed.error


def test_percentiles_are_observed_values() -> None:
    stats = percentiles([0.001 * i for i in range(1, 101)])
    assert stats["p50"] == 50.0
    assert stats["p99"] == 99.0
    assert stats["max"] == 100.0
    assert percentiles([])["p50"] is None


def test_workload_is_deterministic_and_within_bounds(workload: Workload) -> None:
    again = Workload(TOKENIZER, seed=0)
    first = [t.messages for t in workload.conversation(3)]
    assert first == [t.messages for t in again.conversation(3)]
    assert first != [t.messages for t in workload.conversation(4)]
    lengths = [t.prompt_tokens for k in range(200) for t in workload.conversation(k)]
    assert min(lengths) >= 1000
    assert max(lengths) <= MAX_PROMPT_TOKENS
    assert 2200 <= sum(lengths) / len(lengths) <= 2600


def test_successive_turns_extend_each_other(workload: Workload) -> None:
    turns = list(workload.conversation(11, with_ids=True))
    assert len(turns) >= 2
    for before, after in itertools.pairwise(turns):
        assert before.prompt_ids is not None and after.prompt_ids is not None
        assert after.prompt_ids[: len(before.prompt_ids)] == before.prompt_ids
        assert after.messages[: len(before.messages)] == before.messages


def test_prompt_ids_equal_the_rendered_chat_template(workload: Workload) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    config = json.loads((ROOT / "models/qwen3/tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(config["chat_template"])
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    for k in (0, 1, 2, 50):
        for turn in workload.conversation(k, with_ids=True):
            text = template.render(messages=turn.messages, add_generation_prompt=True)
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            assert ids == turn.prompt_ids
            assert len(ids) == turn.prompt_tokens


def test_tree_cpu_includes_exited_descendants() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    # The child burns CPU, then runs a grandchild that burns and exits (and is reaped).
    script = burn + f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}])\n"
    script += "time.sleep(5)\n"
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_ms(child.pid) < 550 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_ms(child.pid) >= 550
        assert tree_rss(child.pid)[0]["rss_kb"] > 0
    finally:
        child.kill()
        child.wait()


class _FakeDriver:
    kind = "fake"
    needs_ids = False

    def __init__(self) -> None:
        self.calls = 0

    async def request(self, slot: int, turn: Turn) -> Outcome:
        self.calls += 1
        await asyncio.sleep(0.005)
        return Outcome(ttft=0.001, gaps=[0.001] * 127, chunks=128, tokens=128)

    async def close(self) -> None:
        pass


def _config(**overrides: object) -> LoadConfig:
    values: dict = dict(
        label="t", concurrency=4, duration=0.5, max_requests=1_000_000, warmup=0.2,
        warmup_requests=1_000_000, request_timeout=5.0, max_tokens=128, seed=0,
        conversation_offset=0, gateway_pid=None, engine_pid=None, rss_interval=0.0,
        tokenizer=str(TOKENIZER),
    )  # fmt: skip
    values.update(overrides)
    return LoadConfig(**values)


def test_run_load_is_bounded_by_time_and_count(workload: Workload) -> None:
    started = time.monotonic()
    result = asyncio.run(run_load(_config(), _FakeDriver(), workload))
    assert time.monotonic() - started < 3
    assert result["completed"] > 20 and result["errors"] == 0
    assert result["warmup"]["completed"] > 0
    assert result["ttft_ms"]["p50"] == 1.0

    capped = asyncio.run(run_load(_config(duration=30, max_requests=25), _FakeDriver(), workload))
    assert 25 <= capped["completed"] < 30
    assert capped["window_s"] < 5


async def _serve_sse(tokens: int, statuses: list[int]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            status = statuses.pop(0) if statuses else 200
            if status != 200:
                body = b'{"error": {"message": "no engine"}}'
                writer.write(
                    b"HTTP/1.1 %d Busy\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in sse_stream(tokens).split(b"\n\n")[:-1]:
                writer.write(b"%x\r\n%s\n\n\r\n" % (len(piece) + 2, piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_http_driver_streams_over_one_keep_alive_connection(workload: Workload) -> None:
    async def go() -> list[Outcome]:
        server, port = await _serve_sse(128, statuses=[200, 503, 200])
        driver = HttpDriver(f"http://127.0.0.1:{port}", "qwen3", 128, {})
        turn = next(workload.conversation(0))
        outcomes = [await driver.request(0, turn) for _ in range(3)]
        connections = len(driver._conns)
        await driver.close()
        server.close()
        assert connections == 1
        return outcomes

    ok, busy, again = asyncio.run(go())
    assert ok.ok and ok.tokens == 128 and ok.chunks == 128 and len(ok.gaps) == 127
    assert not busy.ok and busy.error.startswith("HTTP 503") and "no engine" in busy.error
    assert again.ok and again.tokens == 128


def test_report_renders_every_section(workload: Workload, tmp_path: Path) -> None:
    from bench.report import write_report

    base = asyncio.run(run_load(_config(duration=0.2, warmup=0.0), _FakeDriver(), workload))
    targets = [
        {"name": "floor", "kind": "floor", "workers": None},
        {"name": "herdsman-w1", "kind": "herdsman", "workers": 1},
        {"name": "herdsman-w2", "kind": "herdsman", "workers": 2},
        {"name": "smg", "kind": "smg", "workers": None},
    ]
    scenarios = [
        {"name": "standard", "title": "Standard", "engine_args": ["--itl-base-ms", "10"],
         "levels": [1, 32], "duration": 1.0, "warmup": 0.0, "duration_c1": 2.0},
        {"name": "gateway-bound", "title": "Gateway-bound", "engine_args": [],
         "levels": [128], "duration": 1.0, "warmup": 0.0, "duration_c1": None},
    ]  # fmt: skip
    for scenario in scenarios:
        for c in scenario["levels"]:
            for i, target in enumerate(targets):
                result = json.loads(json.dumps(base))
                result.update(
                    scenario=scenario["name"], scenario_title=scenario["title"],
                    target=target["name"], target_kind=target["kind"], concurrency=c,
                    commands={"engine": "sim", "gateway": None if i == 0 else "gw", "client": "c"},
                    stop={"gateway": {"stop_s": 3.0, "sigkill": target["kind"] == "smg"}},
                )  # fmt: skip
                if target["kind"] != "floor":
                    result["gateway"]["cpu_ms_per_req"] = 2.0 + i
                    result["gateway"]["cpu_cores"] = 0.1
                    result["gateway"]["rss_start"] = {"total_kb": 1024, "processes": []}
                    result["gateway"]["rss_end"] = {"total_kb": 2048, "processes": []}
                    result["gateway"]["rss_before_warmup"] = None
                    result["gateway"]["rss_samples_mb"] = [[1.0, 1.0], [2.0, 2.0]]
                path = tmp_path / f"{scenario['name']}-c{c}-{target['name']}.json"
                path.write_text(json.dumps(result))
    meta = {
        "started": "2026-01-01T00:00:00+00:00", "mode": "quick", "elapsed_s": 10,
        "machine": {"nproc": 2, "cpu_model": "test", "kernel": "6"},
        "versions": {"herdsman": "abc", "smg": "1.13.0", "python": "3.11"},
        "smg_defaults": {"tokenizer-cache-enable-l0": "False",
                         "tokenizer-cache-enable-l1": "False", "reasoning-parser": "None"},
        "background_busy_before": 0.5, "interfaces": ["lo"],
        "scenarios": scenarios, "targets": targets, "invocation": "./bench/run.sh --quick",
    }  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    docs = tmp_path / "docs/benchmarks.md"
    write_report(tmp_path, docs)
    text = docs.read_text()
    for heading in ("## Setup", "## Results", "## Ratios", "## Memory", "## Commands"):
        assert heading in text
    assert "| standard | 32 | 0.60× | 0.80× |" in text  # 3 ms and 4 ms against 5 ms
    assert "herdsman-w2 ÷ herdsman-w1" in text
    assert "TTFT p50 added" in text
    assert "smg: still running" in text


def test_aiperf_dataset_replays_the_bodies_load_py_sends(
    workload: Workload, tmp_path: Path
) -> None:
    import msgspec
    from bench.aiperf_client import write_dataset

    summary = write_dataset(tmp_path, workload, 5, 3)
    files = sorted(tmp_path.glob("*.jsonl"))
    assert [f.name for f in files] == ["conv-0000000.jsonl", "conv-0000001.jsonl",
                                       "conv-0000002.jsonl"]  # fmt: skip
    driver = HttpDriver("http://127.0.0.1:1", "qwen3", 128, {"separate_reasoning": False})
    sent = 0
    for k, path in zip(range(5, 8), files, strict=True):
        lines = path.read_text().splitlines()
        turns = list(workload.conversation(k))
        assert len(lines) == len(turns)
        for line, turn in zip(lines, turns, strict=True):
            # The same JSON, key order included, as the body load.py writes for this turn.
            assert msgspec.json.encode(json.loads(line)) == driver.body(turn)
            sent += 1
    assert summary["requests"] == sent and summary["first_conversation"] == 5


def test_aiperf_export_parses_into_the_report(workload: Workload, tmp_path: Path) -> None:
    from bench.aiperf_client import AiperfRun, Sample, Sampler, cpu_window, parse_export
    from bench.report import clients_section

    run = AiperfRun("herdsman-w1", "http://x", 32, 6.0, 1.5, tmp_path, tmp_path, tmp_path)
    stats = {"unit": "ms", "avg": 12.0, "p50": 11.0, "p90": 13.0, "p99": 20.0}
    export = {
        "aiperf_version": "0.13.0", "benchmark_duration": {"avg": 6.5},
        "request_throughput": {"avg": 20.0}, "output_token_throughput": {"avg": 2560.0},
        "time_to_first_token": stats, "inter_chunk_latency": stats,
        "inter_token_latency": stats, "request_latency": stats,
        "output_sequence_length": {"avg": 128.0}, "http_req_chunks_received": {"avg": 129.0},
        "input_sequence_length": {"avg": 2000.0},
    }  # fmt: skip
    phase = {"start_ns": 10_000_000_000, "end_ns": 16_500_000_000, "successful_request_count": 130,
             "error_request_count": 0, "error_summary": []}  # fmt: skip
    result = parse_export(run, export, phase)
    sampler = Sampler(1, 2)
    sampler.samples = [
        Sample(9_900_000_000, 0.0, 0.0, 0.0, 0, 100),
        Sample(10_100_000_000, 100.0, 50.0, 10.0, 10, 200),
        Sample(16_100_000_000, 490.0, 350.0, 1210.0, 70, 400),
        Sample(16_600_000_000, 999.0, 999.0, 999.0, 99, 999),
    ]
    result["cpu"] = cpu_window(sampler, result)
    assert result["cpu"]["gateway"]["cpu_ms_per_req"] == 3.0  # 390 ms over 130 requests
    assert result["cpu"]["client"]["cpu_cores"] == 0.2  # 1.2 s over 6 s
    result.update(scenario="standard", target="herdsman-w1", target_kind="herdsman",
                  engine_timing={"ttft_p50_ms": 7.5, "ttft_p99_ms": 15.0},
                  commands={"engine": "sim", "gateway": "gw", "client": "aiperf"})  # fmt: skip
    meta = {"scenarios": [{"name": "standard", "title": "Standard"}]}
    text = "\n".join(clients_section(meta, [], [result]))
    assert "## Two clients" in text
    row = "| 32 | herdsman-w1 | aiperf | 20.00 | – | 2,560 | 11.0 | 20.0 | 7.5 | 15.0 | 11.00 |"
    assert row + " 20.00 | 11.00 | 20.00 | 0 | 3.00 | 0.20 | 30% |" in text


def test_relay_floor_streams_every_token_and_counts_its_cpu(tmp_path: Path) -> None:
    # The floor's relay must answer as a gateway does, or its CPU per request means nothing:
    # every request streamed whole through bench/load.py's parser, none failing.
    from bench.relay_floor import _measure

    result = _measure(concurrency=2, duration=2.0, max_tokens=16, out=tmp_path / "floor.json")
    assert result["errors"] == 0 and result["completed"] > 0
    assert result["tokens_per_request"] == 16 and result["chunks_per_request"] == 16
    assert result["gateway"]["cpu_ms_per_req"] is not None
    assert result["gateway"]["kernel_ms_per_req"] is not None


def test_token_budget_times_the_push_path_and_reads_a_profile(tmp_path: Path) -> None:
    # The budget's HTTP/2 figure is only the push path's cost if every frame reaches the
    # listener, none queued for a reader; and a profile's pieces are its stacks' shares.
    from bench.token_budget import in_server_ms, receiving_stream, token_message

    messages = [token_message(token_id, n + 1) for n, token_id in enumerate([11, 300, 70000])]

    async def feed() -> tuple[list[bytes], int]:
        connection, frames, taken = receiving_stream(messages)
        for data in frames:
            connection.data_received(data)
        return taken, len(connection.streams[0].messages)

    taken, queued = asyncio.run(feed())
    assert taken == messages and queued == 0

    profile = tmp_path / "profile.txt"
    profile.write_text(
        "main (a.py:1);render_chat_prompt (herdsman/pipeline/prepare.py:42);x (jinja2/r.py:3) 3\n"
        "main (a.py:1);step (herdsman/tokenizer/detokenizer.py:68);decode 1\n"
        "main (a.py:1);data_received (herdsman/engines/transport/http2.py:290) 2\n"
        "main (a.py:1);other (herdsman/api/chat.py:9) 4\n"
        "main (a.py:1);run (asyncio/runners.py:118);epoll_pwait 90\n"
    )
    shares = in_server_ms(profile, cpu_ms=5.0)  # 10 busy samples: the epoll wait is idle
    assert shares == pytest.approx({"template": 1.5, "detokenize": 0.5, "http2_receive": 1.0})


def test_engine_timing_reads_the_window_of_a_timing_log(tmp_path: Path) -> None:
    from bench.engine_timing import summarize

    ms = 1_000_000
    log = tmp_path / "timing.log"
    # The probe, then calls 10 ms apart whose engine TTFT is 1, 2, ... 100 ms; one never wrote.
    lines = [f"{0} {5 * ms} 10 0"]
    lines += [f"{(1000 + 10 * i) * ms} {(1000 + 10 * i + i + 1) * ms} 100 50" for i in range(100)]
    lines.append(f"{2000 * ms} - 100 0")
    log.write_text("\n".join(lines) + "\n")

    whole = summarize(log)
    assert whole is not None
    assert whole["requests"] == 100  # not the probe, not the call that never wrote
    assert whole["ttft_p50_ms"] == 50.0  # nearest rank, as load.py's
    assert whole["ttft_p99_ms"] == 99.0
    assert whole["cached_share"] == 0.5
    assert whole["bunched_share"] == 0.0  # 10 ms apart
    warm = summarize(log, skip_s=0.5)  # the first 50 calls are the warm-up
    assert warm is not None and warm["requests"] == 50 and warm["ttft_p50_ms"] == 75.0
    window = summarize(log, window_ns=(1000 * ms, 1095 * ms))
    assert window is not None and window["requests"] == 10
    assert summarize(tmp_path / "missing.log") is None
