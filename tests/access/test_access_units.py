"""The access package's parts on their own: keys, GCRA, the shared board, CORS, error shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest

from herdsman.access.cors import Cors, parse_origins
from herdsman.access.errors import error_response
from herdsman.access.keys import (
    KeyFileError,
    KeyLimits,
    load_keys,
    matches,
    presented_key,
    read_key_file,
)
from herdsman.access.limits import BoardLimiter, decide, gcra_take, gcra_wait
from herdsman.access.redis_limits import DEFAULT_PREFIX, parse_state_url


def test_keys_from_lines_json_and_yaml(tmp_path: Path) -> None:
    defaults = KeyLimits(5, 100, 2)
    lines = tmp_path / "keys.txt"
    lines.write_text("# team keys\nalice:sk-a\n\nbob: sk-b:with:colons\n")
    assert read_key_file(str(lines), defaults) == [
        ("alice", "sk-a", defaults),
        ("bob", "sk-b:with:colons", defaults),
    ]
    data = {"alice": {"key": "sk-a", "requests_per_minute": 1}, "bob": "sk-b"}
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps(data))
    as_yaml = tmp_path / "keys.yaml"
    as_yaml.write_text("alice:\n  key: sk-a\n  requests_per_minute: 1\nbob: sk-b\n")
    for path in (as_json, as_yaml):
        entries = read_key_file(str(path), defaults)
        assert entries == [("alice", "sk-a", KeyLimits(1, 100, 2)), ("bob", "sk-b", defaults)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": {"key": "k", "rpm": 3}}))
    with pytest.raises(KeyFileError, match="unknown settings"):
        read_key_file(str(bad), defaults)
    (tmp_path / "bad.txt").write_text("no-colon-here\n")
    with pytest.raises(KeyFileError, match="line 1"):
        read_key_file(str(tmp_path / "bad.txt"), defaults)


def test_key_ring_finds_keys_and_refuses_duplicates(tmp_path: Path) -> None:
    ring = load_keys(["sk-1", "sk-2"], None, KeyLimits())
    found = ring.find("sk-2")
    assert found is not None and found.name == "key-2"
    assert ring.find("sk-3") is None and ring.find(None) is None
    assert "sk-2" not in repr(found)  # only the digest is kept
    with pytest.raises(KeyFileError, match="same key"):
        load_keys(["sk-1", "sk-1"], None, KeyLimits())
    assert matches("admin", "admin") and not matches("admin", "other")
    assert not matches(None, "admin") and not matches("admin", None)


def test_presented_key_headers() -> None:
    assert presented_key({"authorization": "Bearer sk-1"}) == "sk-1"
    assert presented_key({"authorization": "bearer  sk-1 "}) == "sk-1"
    assert presented_key({"x-api-key": "sk-2"}) == "sk-2"
    assert presented_key({"authorization": "Basic abc", "x-api-key": "sk-3"}) == "sk-3"
    assert presented_key({}) is None


def test_gcra_admits_a_burst_then_one_per_interval() -> None:
    now = 1000.0
    tat = 0.0
    for _ in range(2):  # 2 per minute: two at once
        assert gcra_wait(tat, now, 2) <= 0
        tat = gcra_take(tat, now, 2, 1)
    assert gcra_wait(tat, now, 2) == pytest.approx(30.0)  # the next one in 30 s exactly
    assert gcra_wait(tat, now + 30.0, 2) <= 0
    # Tokens: an overdraft makes the key wait until the bucket has a token again.
    tok = gcra_take(0.0, now, 10, 25)  # 25 tokens of 10/min: 150 s of refill
    assert gcra_wait(tok, now, 10) == pytest.approx(150 + 6 - 60)
    decision = decide(KeyLimits(2, 10, 1), now, tat, tok, in_flight=1)
    assert not decision.allowed and decision.limit == "tokens"
    assert decision.retry_after_header == str(math.ceil(96.0))
    concurrency = decide(KeyLimits(max_concurrent=1), now, 0.0, 0.0, in_flight=1)
    assert concurrency.limit == "concurrency" and concurrency.retry_after_header == "1"


async def test_board_limits_are_shared_between_processes(tmp_path: Path) -> None:
    keys = load_keys(["sk-1"], None, KeyLimits(requests_per_minute=3, max_concurrent=2)).keys
    path = tmp_path / "limits.board"
    first = BoardLimiter(keys, path, slots=2, slot=0)
    second = BoardLimiter(keys, path, slots=2, slot=1)
    a, lease_a = await first.admit(keys[0])
    b, lease_b = await second.admit(keys[0])
    assert a.allowed and b.allowed and lease_a is not None and lease_b is not None
    refused, none = await first.admit(keys[0])
    assert refused.limit == "concurrency" and none is None
    lease_b.release()
    lease_b.release()  # once only
    c, lease_c = await second.admit(keys[0])
    assert c.allowed and lease_c is not None
    lease_a.release()
    lease_c.release()
    d, _ = await first.admit(keys[0])  # a 4th request in the minute: rpm 3
    assert d.limit == "requests" and 0 < d.retry_after <= 20.0
    # A process that dies holding a slot: its replacement in that slot starts from zero.
    concurrent = load_keys(["sk-1"], None, KeyLimits(max_concurrent=1)).keys
    board = tmp_path / "concurrent.board"
    dying = BoardLimiter(concurrent, board, slots=2, slot=1)
    assert (await dying.admit(concurrent[0]))[0].allowed
    other = BoardLimiter(concurrent, board, slots=2, slot=0)
    assert (await other.admit(concurrent[0]))[0].limit == "concurrency"
    replacement = BoardLimiter(concurrent, board, slots=2, slot=1)
    assert (await other.admit(concurrent[0]))[0].allowed
    for limiter in (dying, other, replacement):
        await limiter.close()
    await first.close()
    await second.close()


def test_state_url_prefix() -> None:
    assert parse_state_url("redis://h:1/0") == ("redis://h:1/0", DEFAULT_PREFIX)
    assert parse_state_url("redis://h:1/0?prefix=app:&ttl=5") == ("redis://h:1/0", "app:limits:")
    with pytest.raises(ValueError):
        parse_state_url("http://h")


def test_cors() -> None:
    assert parse_origins(["https://a.example, https://b.example/", "https://a.example"]) == [
        "https://a.example",
        "https://b.example",
    ]
    cors = Cors(["https://a.example"])
    assert cors.allow_origin("https://a.example") == "https://a.example"
    assert cors.allow_origin("https://evil.example") is None
    assert Cors(["*"]).allow_origin("https://x.example") == "*"
    headers = {
        "origin": "https://a.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, x-stainless-os",
    }
    assert Cors.is_preflight("OPTIONS", headers)
    answer = dict(cors.preflight(headers).headers)
    assert "x-stainless-os" in answer["access-control-allow-headers"]
    for name in ("authorization", "x-api-key", "content-type", "anthropic-version"):
        assert name in answer["access-control-allow-headers"]
    assert cors.preflight({**headers, "origin": "https://evil.example"}).status == 403


def test_error_shapes() -> None:
    openai = error_response("/v1/chat/completions", 401, "invalid API key")
    assert msgspec.json.decode(openai.body) == {
        "error": {
            "message": "invalid API key",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    limited = error_response("/v1/messages", 429, "slow down", [("retry-after", "3")])
    assert msgspec.json.decode(limited.body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert ("retry-after", "3") in limited.headers


async def test_gate_holds_a_streams_slot_and_counts_its_tokens() -> None:
    """In process: a stream keeps its key's concurrency slot until the server closes it, and
    the tokens the pipeline reports while it runs are charged to the key."""
    from herdsman.access.gate import AccessGate
    from herdsman.access.keys import KeyRing
    from herdsman.access.usage import count_tokens
    from herdsman.http import Request, Response, StreamingResponse

    ring = load_keys(["sk-1"], None, KeyLimits(tokens_per_minute=60, max_concurrent=1))
    limiter = BoardLimiter(ring.keys, None)
    closed: list[str] = []

    async def app(request: Request) -> Response | StreamingResponse:
        count_tokens(30)  # the prompt, at admission

        async def chunks():
            yield b"data: x\n\n"
            count_tokens(40)  # the completion, when it ends

        return StreamingResponse(chunks(), on_close=lambda: closed.append("app"))

    gate = AccessGate(app, KeyRing(ring.keys), limiter=limiter)

    def request() -> Request:
        return Request("POST", "/v1/chat/completions", "", {"x-api-key": "sk-1"}, b"")

    stream = await gate(request())
    assert isinstance(stream, StreamingResponse)
    busy = await gate(request())
    assert busy.status == 429 and dict(busy.headers)["retry-after"] == "1"
    body = [chunk async for chunk in stream.chunks]  # the server writes the body...
    assert body == [b"data: x\n\n"]
    assert stream.on_close is not None
    stream.on_close()  # ...then closes it
    assert closed == ["app"]
    # 70 tokens of 60 a minute: the bucket holds a token again in 70 + 1 - 60 = 11 s.
    refused = await gate(request())
    assert refused.status == 429
    assert b"tokens per minute" in refused.body
    assert dict(refused.headers)["retry-after"] == "11"
    unknown = await gate(Request("GET", "/v1/models", "", {"authorization": "Bearer x"}, b""))
    assert unknown.status == 401
