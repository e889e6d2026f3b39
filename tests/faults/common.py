"""What the fault suites share: starting faulty engines and a gateway in front of them, reading
the engines' abort logs, and checking that a response ended one of the three allowed ways."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from smg_grpc_proto.generated import vllm_engine_pb2, vllm_engine_pb2_grpc
from tests.conftest import QWEN3, Proc, start_gateway, start_sim

MODEL = "qwen3"
FAST = ("--ttft-base-ms", "1", "--prefill-ms-per-1k", "0", "--itl-base-ms", "1")


def sim(tmp_path: Path, name: str, *flags: str, port: int = 0) -> tuple[Proc, Path]:
    """An engine-sim logging the Abort RPCs and cancels it receives."""
    log = tmp_path / f"{name}.aborts"
    argv = [*FAST, *flags, "--abort-log", str(log)]
    if port:
        argv += ["--port", str(port)]
    return start_sim(QWEN3, "vllm", *argv), log


def gateway(*sims: Proc, flags: tuple[str, ...] = ()) -> Proc:
    """One gateway process, no spare, fast health checks, local tokenizer."""
    return start_gateway(
        *(s.address for s in sims),
        extra=(
            "--model-path",
            str(QWEN3),
            "--workers",
            "1",
            "--no-warm-spare",
            "--health-check-interval",
            "0.5",
            *flags,
        ),
    )


def chat(content: str = "hi", **fields: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def stream_outcome(response: httpx.Response) -> tuple[list[dict], dict | None]:
    """The chunks of an SSE stream and its error event, if any. Asserts the stream ended with
    [DONE] and that nothing but the error event came after an error."""
    events: list[dict] = []
    error: dict | None = None
    done = False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        assert not done, "nothing may follow [DONE]"
        if payload == "[DONE]":
            done = True
            continue
        assert error is None, "only [DONE] may follow an error event"
        event = json.loads(payload)
        if "error" in event:
            error = event["error"]
        else:
            events.append(event)
    assert done, "a stream must end with data: [DONE]"
    return events, error


def metric(base_url: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) from /metrics."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def engine_active(engine: Proc) -> int:
    """Requests the engine-sim is working on now (its GetServerInfo)."""
    with grpc.insecure_channel(engine.address) as channel:
        stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
        info = stub.GetServerInfo(vllm_engine_pb2.GetServerInfoRequest(), timeout=10)
    return int(info.active_requests)
