"""What an engine failure says: about the worker (for its circuit breaker), and to the client.

Shared by every stage that sends work to an engine (generations, pooling), so that a worker is
judged the same way whatever it was asked to do.
"""

from __future__ import annotations

import logging

from herdsman.engines import EngineBusy, EngineDeadlineExceeded, EngineError, EngineUnavailable
from herdsman.engines.disaggregated import KvTransferTimeout, PrefillFailed
from herdsman.observability import METRICS
from herdsman.pipeline.errors import (
    EngineFailed,
    EngineTimeout,
    InvalidRequest,
    NoWorkerAvailable,
    Overloaded,
    RequestError,
)
from herdsman.routing import Worker

log = logging.getLogger(__name__)

# Engine statuses that say the request itself is wrong (or cannot be served anywhere): answered
# to the client, never retried, not held against the worker.
CLIENT_CODES = frozenset(
    {"invalid_argument", "failed_precondition", "out_of_range", "unimplemented", "cancelled"}
)


def judge(worker: Worker, exc: EngineError, *, produced: bool) -> None:
    """What this failure says about the worker, for its circuit breaker."""
    circuit = worker.circuit
    METRICS.engine_failures.inc(labels=(failure_kind(exc),))
    if isinstance(exc, EngineBusy) or exc.code in CLIENT_CODES:
        circuit.record_neutral()
    elif isinstance(exc, EngineDeadlineExceeded) and produced:
        circuit.record_neutral()  # a long generation, not a stuck worker
    else:
        opened = circuit.opened
        circuit.record_failure()
        if circuit.opened != opened:
            METRICS.circuit_opened.inc(labels=(worker.url,))
            log.warning("worker %s: circuit opened (%s)", worker.url, exc)
        if isinstance(exc, EngineUnavailable):
            worker.suspect(str(exc))


def request_error(exc: EngineError, request_timeout: float) -> RequestError:
    """The pipeline error a client gets for an engine failure that is not retried."""
    if isinstance(exc, PrefillFailed):
        exc = exc.cause
    if isinstance(exc, KvTransferTimeout):
        return EngineTimeout(str(exc), code="kv_transfer_timeout")
    if isinstance(exc, EngineBusy):
        return Overloaded(
            f"the engine is at capacity: {exc}", retry_after=1.0, code="engine_overloaded"
        )
    if isinstance(exc, EngineDeadlineExceeded):
        return EngineTimeout(
            f"the request did not finish within {request_timeout:g}s", code="timeout"
        )
    if isinstance(exc, EngineUnavailable):
        return NoWorkerAvailable(f"engine unavailable: {exc}", code="engine_unavailable")
    if exc.code == "invalid_argument":
        return InvalidRequest(f"the engine rejected the request: {exc}", code="invalid_request")
    return EngineFailed(f"engine failed: {exc}", code="engine_error")


def failure_kind(exc: EngineError) -> str:
    if isinstance(exc, EngineBusy):
        return "busy"
    if isinstance(exc, EngineUnavailable):
        return "unavailable"
    if isinstance(exc, EngineDeadlineExceeded):
        return "timeout"
    if exc.code in CLIENT_CODES:
        return "rejected"
    return "internal"
