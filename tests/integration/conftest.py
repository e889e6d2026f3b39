"""The real engine tier: vLLM's CPU build serving a tiny random-weight Llama, herdsman in front.

The engine runs from a separate venv outside the clone, built by ``scripts/vllm_env.sh`` (``make
test`` builds it first and passes its python in ``HERDSMAN_VLLM_PYTHON``). Without that venv the
tier is skipped, except in CI (``CI=true``), where a missing engine is a failure.
``HERDSMAN_SKIP_VLLM=1`` opts out on purpose. The engine and the gateways in front of it are
module-scoped: they are gone once their test module ends instead of idling through the suite.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.conftest import _GATEWAY_READY, LLAMA3, ROOT, Proc, wait_for_line

HERE = Path(__file__).resolve().parent
VLLM_ENV_SCRIPT = ROOT / "scripts" / "vllm_env.sh"
# The generous limits: a cold vLLM start of this tier (eager, no servicer warm-up) takes 25-80 s
# on 2 shared cores here, two servers starting at once; a compiled one took 75 s and more.
VLLM_START_TIMEOUT = float(os.environ.get("HERDSMAN_VLLM_START_TIMEOUT", "600"))
MAX_MODEL_LEN = 4096
GRPC_SERVER = "vllm.entrypoints.launchers.grpc_server"
OPENAI_SERVER = "vllm.entrypoints.openai.api_server"
SERVED_NAME = "tiny-llama"
EAGER = ("--enforce-eager",)


def _vllm_python() -> Path | None:
    explicit = os.environ.get("HERDSMAN_VLLM_PYTHON")
    if explicit:
        return Path(explicit)
    if not VLLM_ENV_SCRIPT.exists():
        return None
    found = subprocess.run(
        ["bash", str(VLLM_ENV_SCRIPT), "--path"], capture_output=True, text=True, check=False
    )
    return Path(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip() else None


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if os.environ.get("HERDSMAN_SKIP_VLLM") == "1":
        pytest.skip("real-engine tier skipped: HERDSMAN_SKIP_VLLM=1")
    python = _vllm_python()
    if python is None or not python.exists():
        message = (
            f"the vLLM environment is not built (HERDSMAN_VLLM_PYTHON={python}); "
            "run `scripts/vllm_env.sh` or `make test`, or set HERDSMAN_SKIP_VLLM=1"
        )
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI runs the real-engine tier: {message}", pytrace=False)
        pytest.skip(f"real-engine tier skipped: {message}")
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LlamaForCausalLM with the real Llama 3 tokenizer (fixed seed)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run(
        [str(vllm_python), str(HERE / "make_tiny_llama.py"), str(LLAMA3), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_port(taken: Collection[int] = ()) -> int:
    """A free port below the kernel's ephemeral range. vLLM binds its gRPC port only at the end
    of its start, a minute or more after the port is picked; the ports other processes take
    meanwhile (port 0 binds, outgoing connections, the other engine's own sockets) all come from
    the ephemeral range, and did take one picked there (free_port)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.SystemRandom()
    for _ in range(100 if low > 11024 else 0):
        port = rng.randrange(low - 10000, low)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


@dataclass
class VllmServer:
    process: subprocess.Popen[bytes]
    address: str
    log: Path
    startup_seconds: float
    started: float = 0.0  # time.monotonic() at launch

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _health_serving(address: str) -> bool:
    """grpc.health.v1 Check: SERVING (the servicer holds NOT_SERVING until its warm-up ends)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m,
            response_deserializer=lambda b: b,
        )
        try:
            return check(b"", timeout=2) == b"\x08\x01"
        except grpc.RpcError:
            return False


def vllm_env(**extra: str) -> dict[str, str]:
    """The environment every vLLM process of this tier runs in (offline, small KV cache)."""
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB; the default (4) is more than a 2-core CI box spares
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # The servicer's planned warm-up visits every batch and prefill shape before it reports
        # SERVING (7-19 s a start here): it spares a production engine's first requests a
        # compile, and a tiny eager model has none to spare.
        SMG_VLLM_SERVICER_WARMUP="off",
        **extra,
    )


def launch_vllm(argv: list[str], log: Path, address: str, env: dict[str, str]) -> VllmServer:
    """Start a vLLM process (its output in ``log``); ``wait_vllm_ready`` waits for it."""
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return VllmServer(process, address, log, 0.0, started)


def wait_vllm_ready(server: VllmServer, ready: Callable[[str], bool]) -> None:
    """Ask ``ready(address)`` each second until it holds; stops the server and raises if it
    exits first or the start timeout passes."""
    deadline = server.started + VLLM_START_TIMEOUT
    try:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {server.process.returncode} before it was ready; "
                    f"log {server.log}:\n" + server.log_tail()
                )
            if ready(server.address):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vLLM not ready after {VLLM_START_TIMEOUT:.0f}s; log {server.log}:\n"
                    + server.log_tail()
                )
            # Readiness can only be asked for; the process's exit is waited on, so a server
            # that dies is reported at once.
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=1.0)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - server.started
    print(f"\nvLLM ready in {server.startup_seconds:.1f}s (log: {server.log})", file=sys.stderr)


def vllm_argv(
    entrypoint: str, vllm_python: Path, model: Path, served_name: str, port: int, *extra: str
) -> list[str]:
    """A vLLM server of this tier for ``model``: float32, seed 0, a small context, eager.

    Eager (no torch.compile): compiling took 20-50 s of every start here, and a tier that compares
    two servers' outputs compares them under the same flags, not with a compiled run."""
    return [
        str(vllm_python),
        "-m",
        entrypoint,
        "--model",
        str(model),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--gpu-memory-utilization",
        "0.2",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--seed",
        "0",
        *EAGER,
        *extra,
    ]


def grpc_server_argv(
    vllm_python: Path, model: Path, served_name: str, port: int, *extra: str
) -> list[str]:
    """vLLM's gRPC servicer (the VllmEngine service herdsman talks to) for ``model``."""
    return vllm_argv(GRPC_SERVER, vllm_python, model, served_name, port, *extra)


def openai_ready(address: str) -> bool:
    """vLLM's OpenAI server at ``address`` answers (it serves once its engine is ready)."""
    try:
        return httpx.get(f"http://{address}/v1/models", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# One engine for the session: test_vllm.py and the differential tier both talk to it (a vLLM
# start is the tier's largest cost), each through gateways of its own.
@pytest.fixture(scope="session")
def vllm_server(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    port = engine_port()
    argv = grpc_server_argv(
        vllm_python,
        tiny_model,
        SERVED_NAME,
        port,
        # "Added request X." / "Aborted request(s) X." lines: the abort test reads them.
        "--enable-log-requests",
    )
    server = launch_vllm(argv, log, f"127.0.0.1:{port}", vllm_env())
    wait_vllm_ready(server, _health_serving)
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On a failure in this tier, append the end of vLLM's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        server = item.funcargs.get("vllm_server") if hasattr(item, "funcargs") else None
        if isinstance(server, VllmServer):
            report.sections.append((f"vLLM log ({server.log})", server.log_tail(80)))


@dataclass
class Gateway(Proc):
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_gateway_logged(
    worker: str,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Gateway:
    """``herdsman serve`` with one gateway process, its log (stderr) kept in ``log``."""
    argv = [
        sys.executable,
        "-m",
        "herdsman",
        "serve",
        "--worker",
        f"grpc://{worker}",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--workers",
        "1",
        *extra,
    ]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sink, env=full_env)
    try:
        match = wait_for_line(process, _GATEWAY_READY, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{log.read_text()}") from exc
    return Gateway(process, f"{match.group(1).decode()}:{match.group(2).decode()}", log)


@pytest.fixture(scope="module", params=["native", "grpcio"])
def vllm_transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def vllm_gateway(
    vllm_server: VllmServer,
    tiny_model: Path,
    vllm_transport: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """herdsman in front of vLLM with the model's local tokenizer, per gRPC transport."""
    log = tmp_path_factory.mktemp(f"gateway-{vllm_transport}") / "gateway.log"
    gateway = start_gateway_logged(
        vllm_server.address,
        log,
        "--model-path",
        str(tiny_model),
        "--grpc-transport",
        vllm_transport,
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def engine_client(vllm_server: VllmServer) -> Iterator[EngineClient]:
    client = EngineClient(vllm_server.address)
    yield client
    client.close()


class EngineClient:
    """Talks to vLLM's VllmEngine service directly (grpcio), for the reference numbers."""

    def __init__(self, address: str) -> None:
        import grpc
        from smg_grpc_proto.generated import vllm_engine_pb2 as pb2

        self.pb2 = pb2
        self.channel = grpc.insecure_channel(address)
        prefix = "/vllm.grpc.engine.VllmEngine/"
        self._generate = self.channel.unary_stream(
            prefix + "Generate",
            request_serializer=pb2.GenerateRequest.SerializeToString,
            response_deserializer=pb2.GenerateResponse.FromString,
        )
        self._loads = self.channel.unary_unary(
            prefix + "GetLoads",
            request_serializer=pb2.GetLoadsRequest.SerializeToString,
            response_deserializer=pb2.GetLoadsResponse.FromString,
        )
        self._counter = 0

    def generate(self, input_ids: list[int], **sampling: object) -> list[object]:
        """A non-streaming Generate; returns the GenerateComplete messages (one per choice)."""
        self._counter += 1
        request = self.pb2.GenerateRequest(
            request_id=f"reference-{os.getpid()}-{self._counter}",
            tokenized=self.pb2.TokenizedInput(input_ids=input_ids),
            sampling_params=self.pb2.SamplingParams(**sampling),
            stream=False,
        )
        completes = [r.complete for r in self._generate(request, timeout=120)]
        return sorted(completes, key=lambda c: c.index)

    def running_requests(self) -> int:
        loads = self._loads(self.pb2.GetLoadsRequest(), timeout=10).loads
        return sum(load.num_running_reqs + load.num_waiting_reqs for load in loads)

    def close(self) -> None:
        self.channel.close()


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
