"""The routing benchmark's pieces: its workloads, the engines' counters, the client, the report.

Nothing here runs the benchmark itself (a fleet, a gateway): bench/routing.sh does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import Outcome  # noqa: E402
from bench.routing_workload import SharedWorkload, UniqueWorkload, describe  # noqa: E402
from bench.runner import LoadConfig, run_load  # noqa: E402
from bench.workload import Turn  # noqa: E402

from bench import routing  # noqa: E402

TOKENIZER = ROOT / "models/qwen3/tokenizer.json"
BLOCK = 16


@pytest.fixture(scope="module")
def shared() -> SharedWorkload:
    return SharedWorkload(TOKENIZER, seed=0)


@pytest.fixture(scope="module")
def unique() -> UniqueWorkload:
    return UniqueWorkload(TOKENIZER, seed=0)


def _render(turn: Turn) -> list[int]:
    """The prompt's ids as a gateway makes them: Qwen3's chat template, then the tokenizer."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    config = json.loads((ROOT / "models/qwen3/tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(config["chat_template"]).render(
        messages=turn.messages, add_generation_prompt=True
    )
    return list(Tokenizer.from_file(str(TOKENIZER)).encode(text, add_special_tokens=False).ids)


# ---- workloads -------------------------------------------------------------------------------


def test_shared_workload_is_deterministic(shared: SharedWorkload) -> None:
    again = SharedWorkload(TOKENIZER, seed=0)
    assert [t.messages for t in shared.conversation(5)] == [
        t.messages for t in again.conversation(5)
    ]
    assert [t.messages for t in shared.conversation(5)] != [
        t.messages for t in shared.conversation(6)
    ]
    other = SharedWorkload(TOKENIZER, seed=1)
    assert other.system[0].text != shared.system[0].text


def test_shared_turns_extend_each_other_and_match_the_template(shared: SharedWorkload) -> None:
    turns = list(shared.conversation(7, with_ids=True))
    assert 3 <= len(turns) <= 8
    for before, after in itertools.pairwise(turns):
        assert before.prompt_ids is not None and after.prompt_ids is not None
        assert after.prompt_ids[: len(before.prompt_ids)] == before.prompt_ids
    for turn in (turns[0], turns[-1]):
        assert _render(turn) == turn.prompt_ids
        assert turn.prompt_tokens == len(_render(turn))


def test_tenants_share_system_prompts_with_skewed_popularity(shared: SharedWorkload) -> None:
    shape = shared.shape
    low, high = shape.system_tokens
    assert all(low <= len(p.ids) <= high for p in shared.system)
    # Every tenant's prompt is its own from the first cache block on (prefix_hash keys on it).
    firsts = {p.ids[:BLOCK] for p in shared.system}
    assert len(firsts) == shape.tenants
    counts = Counter(shared.tenant(k) for k in range(4000))
    assert counts.most_common(1)[0][0] == 0
    assert counts[0] / 4000 == pytest.approx(shared.tenant_share[0], abs=0.03)
    # Two conversations of one tenant share its whole system prompt, then part ways.
    k1, k2 = [k for k in range(200) if shared.tenant(k) == 0][:2]
    a = next(shared.conversation(k1, with_ids=True)).prompt_ids
    b = next(shared.conversation(k2, with_ids=True)).prompt_ids
    assert a is not None and b is not None
    system = shared.layout.message_tokens("system", shared.system[0])
    assert a[:system] == b[:system]
    assert a != b


def test_unique_prompts_share_no_block(unique: UniqueWorkload) -> None:
    again = UniqueWorkload(TOKENIZER, seed=0)
    turns = [next(unique.conversation(k, with_ids=True)) for k in range(300)]
    assert [t.messages for t in turns[:5]] == [
        next(again.conversation(k)).messages for k in range(5)
    ]
    assert all(len(list(unique.conversation(k))) == 1 for k in range(5))
    firsts = {tuple(t.prompt_ids[:BLOCK]) for t in turns if t.prompt_ids is not None}
    assert len(firsts) == len(turns)
    lengths = [t.prompt_tokens for t in turns]
    assert min(lengths) >= 900 and max(lengths) <= 3600
    assert _render(turns[3]) == turns[3].prompt_ids


def test_describe_reports_what_a_cache_could_reuse(
    shared: SharedWorkload, unique: UniqueWorkload
) -> None:
    s = describe(shared, conversations=100)
    assert 0.85 <= s["reusable_share"] <= 1.0
    assert 3000 <= s["prompt_mean"] <= 6000
    assert s["top_tenant_share"] == shared.tenant_share[0]
    u = describe(unique, conversations=50)
    assert u["requests_per_conversation"] == 1.0
    assert "reusable_share" not in u


# ---- engine counters and gateways ------------------------------------------------------------


def _stats(sequence: int, requests: int, prompt: int, cached: int) -> dict[str, Any]:
    """What an engine-sim's --stats-file holds (plus the CPU the harness adds)."""
    return {
        "sequence": sequence,
        "kv_subscribers": 1,
        "cpu_ms": 100.0 * sequence,
        "ranks": [
            {
                "rank": 0,
                "requests": requests,
                "prompt_tokens": prompt,
                "cached_tokens": cached,
                "generated_tokens": 64 * requests,
                "cache_blocks": 10,
            }
        ],
    }


def test_window_delta_subtracts_the_edges() -> None:
    start = [_stats(1, 10, 1000, 500), _stats(1, 4, 400, 0)]
    end = [_stats(2, 30, 5000, 4000), _stats(3, 14, 1400, 200)]
    window = routing.window_delta(start, end)
    assert window["requests"] == [20, 10]
    assert window["hit_rate"] == pytest.approx((3500 + 200) / (4000 + 1000))
    assert window["max_min"] == 2.0
    assert window["engines"][0]["generated_tokens"] == 64 * 20
    assert window["engines"][1]["cpu_ms"] == 200.0
    assert window["engines"][0]["kv_subscribers"] == 1


def test_an_engine_that_got_nothing_is_an_infinite_imbalance() -> None:
    summary = routing.summarize_engines(
        [
            {"requests": 5, "prompt_tokens": 10, "cached_tokens": 0},
            {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0},
        ]
    )
    assert math.isinf(summary["max_min"])
    assert math.isnan(routing.summarize_engines([])["hit_rate"])


def test_healthy_workers_reads_herdsman_and_smg() -> None:
    herdsman = {"workers": [{"healthy": True}, {"healthy": False}, {"status": "pending"}]}
    smg = {"workers": [{"is_healthy": True, "status": "ready"}, {"is_healthy": True}]}
    assert routing.healthy_workers(herdsman) == 1
    assert routing.healthy_workers(smg) == 2
    assert routing.healthy_workers([]) == 0


def test_targets_cover_every_policy_and_both_smg_modes() -> None:
    targets = routing.all_targets()
    herdsman = {t.policy for t in targets if t.kind == "herdsman"}
    assert herdsman == set(routing.HERDSMAN_POLICIES)
    assert [t.routing_key for t in targets if t.kind == "herdsman"].count(True) == 1
    smg = [(t.policy, t.kv_events) for t in targets if t.kind == "smg"]
    assert smg == [("cache_aware", True), ("cache_aware", False), ("round_robin", True)]
    slugs = {routing.target_slug(t) for t in targets}
    assert len(slugs) == len(targets)
    argv = routing.gateway_argv(targets[0], ["grpc://a:1", "grpc://b:2"], "smg", 2)
    assert argv[argv.index("--policy") + 1] == "round_robin"
    assert argv.count("--worker") == 2
    smg_argv = routing.gateway_argv(targets[-1], ["grpc://a:1", "grpc://b:2"], "smg", 2)
    assert smg_argv[:5] == ["smg", "launch", "--worker-urls", "grpc://a:1", "grpc://b:2"]


# ---- client ----------------------------------------------------------------------------------


def test_routing_client_sends_the_conversation_as_routing_key(shared: SharedWorkload) -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            heads.append(head)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            events = [
                {"choices": [{"delta": {"content": "hi"}}]},
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 64}},
            ]
            body = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events)
            body += b"data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def go() -> list[Outcome]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        keyed = routing.RoutingClient(f"http://127.0.0.1:{port}", routing_key=True)
        plain = routing.RoutingClient(f"http://127.0.0.1:{port}", routing_key=False)
        turn = next(shared.conversation(42))
        outcomes = [await keyed.request(0, turn), await plain.request(0, turn)]
        await keyed.close()
        await plain.close()
        server.close()
        return outcomes

    outcomes = asyncio.run(go())
    assert all(o.ok and o.tokens == 64 for o in outcomes)
    assert b"\r\nX-Routing-Key: conv-42\r\n" in heads[0]
    assert b"X-Routing-Key" not in heads[1]
    assert b"\r\nContent-Length: " in heads[0]


class _FakeDriver:
    kind = "fake"
    needs_ids = False

    async def request(self, slot: int, turn: Turn) -> Outcome:
        await asyncio.sleep(0.005)
        return Outcome(ttft=0.001, chunks=64, tokens=64)

    async def close(self) -> None:
        pass


def test_run_load_calls_the_window_hooks_in_order(shared: SharedWorkload) -> None:
    config = LoadConfig(
        label="t", concurrency=4, duration=0.3, max_requests=1_000_000, warmup=0.1,
        warmup_requests=1_000_000, request_timeout=5.0, max_tokens=64, seed=0,
        conversation_offset=0, gateway_pid=None, engine_pid=None, rss_interval=0.0,
        tokenizer=str(TOKENIZER),
    )  # fmt: skip
    edges: list[str] = []

    async def on_window(edge: str) -> None:
        edges.append(edge)

    result = asyncio.run(run_load(config, _FakeDriver(), shared, on_window))  # type: ignore[arg-type]
    assert edges == ["start", "end"]
    assert result["completed"] > 0


# ---- report ----------------------------------------------------------------------------------


def _result(
    fleet: int, workload: str, name: str, kind: str, *, hit: float, p99: float, tps: float,
    requests: list[int],
) -> dict[str, Any]:  # fmt: skip
    engines = routing.summarize_engines(
        [
            {
                "requests": n,
                "prompt_tokens": 1000,
                "cached_tokens": int(hit * 1000),
                "kv_subscribers": 1,
                "cpu_ms": 10.0,
            }
            for n in requests
        ]
    )
    engines["cpu_cores"] = 0.1
    return {
        "fleet": fleet,
        "workload": workload,
        "target": {"name": name, "kind": kind},
        "engines": engines,
        "ttft_ms": {"p50": p99 / 3, "p99": p99},
        "out_tok_per_s": tps,
        "req_per_s": tps / 64,
        "errors": 0,
        "gateway": {"cpu_cores": 0.05},
    }


SHARED_SHAPE = {
    "tenants": 64, "zipf": 0.8, "system_tokens_total": 270000, "top_tenant_share": 0.14,
    "requests_per_conversation": 5.6, "prompt_mean": 4500, "prompt_p10": 2800,
    "prompt_p90": 6300, "reusable_share": 0.94,
}  # fmt: skip
UNIQUE_SHAPE = {"prompt_mean": 2100, "prompt_p10": 1400, "prompt_p90": 3000}


def _meta() -> dict[str, Any]:
    return {
        "invocation": "./bench/routing.sh --quick",
        "started": "2026-01-01T00:00:00+00:00",
        "mode": "quick",
        "elapsed_s": 600.0,
        "versions": {"herdsman": "abc123", "smg": "1.13.0"},
        "out": "20260101-000000-routing-quick",
        "machine": {"nproc": 2, "cpu_model": "test"},
        "background_busy_before": 0.01,
        "processes": 1,
        "seed": 0,
        "timing": {
            "shared": {"warmup": 6.0, "window": 10.0},
            "unique": {"warmup": 4.0, "window": 8.0},
        },
        "workloads": {"shared": SHARED_SHAPE, "unique": UNIQUE_SHAPE},
        "failed": [{"fleet": 4, "workload": "shared", "target": "x", "error": "boom\nmore"}],
    }


def test_report_checks_the_targets_and_keeps_the_decision_cost_section(tmp_path: Path) -> None:
    results = [
        _result(8, "shared", "round_robin", "herdsman", hit=0.4, p99=5000, tps=1000,
                requests=[20] * 8),
        _result(8, "shared", "cache_aware", "herdsman", hit=0.9, p99=2000, tps=1600,
                requests=[18, 22, 20, 20, 19, 21, 20, 20]),
        _result(8, "shared", "prefix_hash", "herdsman", hit=0.93, p99=6000, tps=1200,
                requests=[40, 5, 20, 20, 20, 20, 20, 15]),
        _result(8, "shared", "smg cache_aware (KV events)", "smg", hit=0.92, p99=3000, tps=1400,
                requests=[41, 5, 20, 20, 20, 20, 20, 15]),
        _result(8, "unique", "least_load", "herdsman", hit=0.0, p99=4000, tps=800,
                requests=[20] * 8),
        _result(8, "unique", "cache_aware", "herdsman", hit=0.0, p99=4100, tps=790,
                requests=[20] * 8),
    ]  # fmt: skip
    rows = "\n".join(routing.checks(results, [8]))
    assert "(2.50×) | **yes**" in rows  # TTFT p99 5000 -> 2000
    assert "(1.60×) | **yes**" in rows  # tok/s 1000 -> 1600
    assert "output tok/s -1.2%" in rows
    # cache_aware's hit rate is under SMG's here, though its TTFT is better.
    assert "hit 90.0% vs 92.0%" in rows and "**no**" in rows
    # prefix_hash is a hashing policy: its imbalance is not held against the 1.5 bound.
    assert "all 4 measurements | **yes**" in rows

    docs = tmp_path / "benchmarks-routing.md"
    cost = "## Routing decision cost\n\nDecisions take 12 µs p99 at 100k blocks.\n"
    docs.write_text(f"# Routing benchmark\n\nold text\n\n{cost}\n## Later\n\nmore\n")
    routing.write_report(results, _meta(), docs)
    text = docs.read_text()
    assert "old text" not in text
    assert cost.strip() in text
    assert text.count("## Routing decision cost") == 1
    for heading in ("## Setup", "### 8 engines, shared", "### 8 engines, unique", "## Commands"):
        assert heading in text
    assert "| herdsman cache_aware | 90.0% |" in text
    assert "**Not measured**: x (4 engines, shared): `boom`" in text
    # Rewriting keeps the kept section exactly once.
    routing.write_report(results, _meta(), docs)
    assert docs.read_text().count("## Routing decision cost") == 1
