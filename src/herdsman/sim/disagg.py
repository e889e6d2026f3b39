"""PD disaggregation (--role prefill / decode): the KV handoff between two engine-sims.

A prefill sim serves a PD request as a regular one cut to its first token, and holds the result
under a room key (SGLang's bootstrap room, vLLM's request id) in its `RoomRegistry`. A decode sim
asks the prefill's handoff ("bootstrap") server for that room over TCP, spends the simulated
transfer time (--kv-transfer-ms-per-1k per 1000 prompt tokens), and decodes without prefilling.

The handoff speaks newline-delimited JSON, one request line and one reply line per connection:

    -> {"room": "42", "wait_unknown": true, "wait_ms": 29990.0, "prompt_tokens": 17,
        "block_ids": null}
    <- {"status": "ready", "prompt_tokens": 17, "first_token_ids": [791], "block_ids": [0, 1]}

The server holds the connection until the room is ready, gone, or the asker's wait has run out
("pending"), so a decode learns of its KV without polling; it only retries connecting while the
prefill is not listening (yet, or any more). A room handed off once is freed; one nobody fetched
is freed after --kv-transfer-timeout-ms; an aborted prefill drops its room, and a decode waiting
on it fails at once. Freed rooms are remembered for the same timeout, so a decode asking late is
told why instead of waiting out its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from herdsman.sim.options import SimOptions
from herdsman.sim.sim_request import DecodeHandoff, PrefillHandoff, RequestState, SimRequest

if TYPE_CHECKING:
    from herdsman.sim.engine import SimEngine

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bytes of KV per prompt token behind the reported transfer speed: an 8B Llama-class model in
# bf16 (32 layers x 8 KV heads x 128 dims x K and V x 2 bytes).
KV_BYTES_PER_TOKEN = 131072
# A decode retries connecting to a prefill that is not listening this often (doubling).
_RETRY_FIRST_S = 0.01
_RETRY_MAX_S = 0.2
# Beyond the wait it asked for, how long a decode gives the prefill to answer.
_REPLY_GRACE_S = 2.0
# How long the server waits for a connection's request line.
_REQUEST_READ_TIMEOUT_S = 10.0
_MAX_REQUEST_BYTES = 1 << 20


class KvTransferError(Exception):
    """A PD decode that cannot get its KV; the Generate call ends with `code`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class KvTimeout(KvTransferError):
    """The KV did not arrive within --kv-transfer-timeout-ms."""


@dataclass(slots=True)
class HandoffCounters:
    """Cumulative handoffs of this sim (--stats-file)."""

    # Prefill: rooms handed to a decode, and rooms freed after nobody fetched them in time.
    sent: int = 0
    expired: int = 0
    # Decode: KV fetched from a prefill; fetches that ran out of time; fetches the prefill
    # refused (its request aborted, an unknown room, a mismatched prompt).
    received: int = 0
    timed_out: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "received": self.received,
            "timed_out": self.timed_out,
            "expired": self.expired,
            "failed": self.failed,
        }


def record_transfer(rank: SimEngine, prompt_tokens: int, transfer_ms: float) -> None:
    """What GetLoads reports as the rank's KV transfer latency and speed."""
    rank.kv_transfer_ms = transfer_ms
    rank.kv_transfer_gb_s = (
        prompt_tokens * KV_BYTES_PER_TOKEN / (transfer_ms / 1000.0) / 1e9 if transfer_ms else 0.0
    )


# ---- the prefill side ----------------------------------------------------------------------


class RoomState(Enum):
    PREFILLING = "prefilling"
    READY = "ready"
    # --drop-kv: prefilled, but the KV will never be handed off.
    LOST = "lost"


@dataclass(slots=True, eq=False)
class Room:
    key: str
    request_id: str
    rank: SimEngine
    prompt_tokens: int
    block_ids: list[int]
    state: RoomState = RoomState.PREFILLING
    first_token_ids: list[int] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


def _mismatch(room: Room, prompt_tokens: int, block_ids: list[int] | None) -> str | None:
    """Why a fetch does not fit the room's KV (a decode sent the wrong request), if it does not."""
    if prompt_tokens != room.prompt_tokens:
        return (
            f"its KV covers {room.prompt_tokens} prompt tokens, the decode's prompt has "
            f"{prompt_tokens}"
        )
    if block_ids is not None and block_ids != room.block_ids:
        return f"the decode asked for blocks {block_ids}, the prefill holds {room.block_ids}"
    return None


class RoomRegistry:
    """The rooms a prefill sim holds, and the decodes waiting on them."""

    def __init__(self, options: SimOptions, counters: HandoffCounters) -> None:
        self._hold_s = options.kv_transfer_timeout_ms / 1000.0
        self._drop_kv = options.drop_kv
        self._transfer_ms_per_token = options.kv_transfer_ms_per_1k / 1000.0
        self._block_size = options.block_size
        self._counters = counters
        self._rooms: dict[str, Room] = {}
        self._by_request: dict[SimRequest, Room] = {}
        # Rooms that are gone, why, and until when that is remembered (insertion order is
        # expiry order: every entry is kept equally long).
        self._gone: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._next_block = 0

    def __len__(self) -> int:
        return len(self._rooms)

    def open(self, request: SimRequest, rank: SimEngine, key: str) -> Room:
        """A PD prefill arrived: its room exists (prefilling) from now on."""
        # Block ids as a real allocator hands them out: the prompt's blocks, partial one included.
        count = -(-request.prompt_len // self._block_size)
        block_ids = list(range(self._next_block, self._next_block + count))
        self._next_block += count
        previous = self._rooms.get(key)
        if previous is not None:
            # A reused key: the older room's decode must not get this request's KV.
            self._drop(previous, "aborted")
        self._gone.pop(key, None)
        room = Room(key, request.params.request_id, rank, request.prompt_len, block_ids)
        self._rooms[key] = room
        self._by_request[request] = room
        return room

    def close(self, request: SimRequest) -> None:
        """The prefill's Generate call ended: hold its KV for a decode, or drop it."""
        room = self._by_request.pop(request, None)
        if room is None or self._rooms.get(room.key) is not room:
            return  # aborted by id meanwhile, or replaced
        if request.state is not RequestState.FINISHED:
            self._drop(room, "aborted")
            return
        room.first_token_ids = [seq.output[0] for seq in request.sequences if seq.output]
        room.state = RoomState.LOST if self._drop_kv else RoomState.READY
        room.rank.rooms_held += 1
        room.expiry = asyncio.get_running_loop().call_later(self._hold_s, self._expire, room)
        self._notify(room.key)

    def abort(self, request_id: str) -> int:
        """Abort RPC on the prefill: drop the rooms of that request, held or still prefilling."""
        rooms = [room for room in self._rooms.values() if room.request_id == request_id]
        for room in rooms:
            self._drop(room, "aborted")
        return len(rooms)

    async def fetch(
        self,
        key: str,
        *,
        wait_unknown: bool,
        wait_s: float,
        prompt_tokens: int,
        block_ids: list[int] | None,
    ) -> dict[str, Any]:
        """A decode's fetch: the reply once the room is ready or gone, or its wait ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            room = self._rooms.get(key)
            if room is None:
                reason = self._gone_reason(key)
                if reason is not None and reason != "lost":
                    return {"status": reason}
                if reason is None and not wait_unknown:
                    return {"status": "unknown"}
            elif room.state is RoomState.READY:
                problem = _mismatch(room, prompt_tokens, block_ids)
                if problem is not None:
                    return {"status": "mismatch", "message": problem}
                return self._hand_off(room)
            # Prefilling, not registered yet, or lost (--drop-kv): wait for a change.
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self.wait_for_change(key, remaining):
                return {"status": "pending"}

    def _hand_off(self, room: Room) -> dict[str, Any]:
        self._remove(room)
        self._bury(room.key, "handed_off")
        self._notify(room.key)
        self._counters.sent += 1
        record_transfer(
            room.rank, room.prompt_tokens, room.prompt_tokens * self._transfer_ms_per_token
        )
        return {
            "status": "ready",
            "prompt_tokens": room.prompt_tokens,
            "first_token_ids": room.first_token_ids,
            "block_ids": room.block_ids,
        }

    def _expire(self, room: Room) -> None:
        if self._rooms.get(room.key) is room:
            self._counters.expired += 1
            logger.info("freeing KV of room %s: no decode fetched it in time", room.key)
            self._drop(room, "lost" if room.state is RoomState.LOST else "expired")

    def _drop(self, room: Room, reason: str) -> None:
        self._remove(room)
        self._bury(room.key, reason)
        self._notify(room.key)

    def _remove(self, room: Room) -> None:
        del self._rooms[room.key]
        if room.state is not RoomState.PREFILLING:
            room.rank.rooms_held -= 1
        if room.expiry is not None:
            room.expiry.cancel()

    def _bury(self, key: str, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        gone = self._gone
        while gone:
            oldest = next(iter(gone.values()))
            if oldest[1] > now:
                break
            gone.popitem(last=False)
        gone.pop(key, None)
        gone[key] = (reason, now + self._hold_s)

    def _gone_reason(self, key: str) -> str | None:
        entry = self._gone.get(key)
        if entry is None or entry[1] <= asyncio.get_running_loop().time():
            return None
        return entry[0]

    async def wait_for_change(self, key: str, timeout_s: float) -> bool:
        """Wait for a change to the room `key`; False when `timeout_s` passed first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(key, []).append(future)
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
            return bool(done)
        finally:
            watchers = self._watchers.get(key)
            if watchers is not None and future in watchers:
                watchers.remove(future)
                if not watchers:
                    del self._watchers[key]

    def _notify(self, key: str) -> None:
        for future in self._watchers.pop(key, ()):
            if not future.done():
                future.set_result(None)


class HandoffServer:
    """The prefill's bootstrap server: answers each connection's fetch from the registry."""

    def __init__(self, registry: RoomRegistry) -> None:
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on (host, port); returns the bound port (0 picks a free one)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=_MAX_REQUEST_BYTES, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Held fetches end with their connections (3.11's wait_closed does not wait for them).
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            line = await asyncio.wait_for(reader.readline(), _REQUEST_READ_TIMEOUT_S)
            try:
                reply = await self._answer(json.loads(line), reader)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reply = {"status": "bad_request", "message": f"malformed fetch: {exc!r}"}
            if reply is not None:
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # the decode went away or sent an over-long line: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(
        self, ask: dict[str, Any], reader: asyncio.StreamReader
    ) -> dict[str, Any] | None:
        """The fetch's reply; None if the decode hung up first (it stopped waiting)."""
        block_ids = ask.get("block_ids")
        fetch = asyncio.ensure_future(
            self._registry.fetch(
                str(ask["room"]),
                wait_unknown=bool(ask["wait_unknown"]),
                wait_s=float(ask["wait_ms"]) / 1000.0,
                prompt_tokens=int(ask["prompt_tokens"]),
                block_ids=None if block_ids is None else [int(b) for b in block_ids],
            )
        )
        # The decode sends nothing more: a read that returns means it closed the connection.
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({fetch, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (fetch, hangup):
                waiter.cancel()
            await asyncio.wait({fetch, hangup})
        if fetch.cancelled():
            return None
        return fetch.result()


# ---- the decode side -----------------------------------------------------------------------


async def _ask(handoff: DecodeHandoff, prompt_tokens: int, wait_s: float) -> dict[str, Any]:
    """One fetch over one connection; raises OSError/ValueError when there is no usable reply."""
    # A host that drops the connection attempt must not hold the decode past its timeout.
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(handoff.host, handoff.port, limit=_MAX_REQUEST_BYTES), wait_s
    )
    try:
        ask = {
            "room": handoff.room,
            "wait_unknown": handoff.wait_unknown,
            "wait_ms": wait_s * 1000.0,
            "prompt_tokens": prompt_tokens,
            "block_ids": None if handoff.block_ids is None else list(handoff.block_ids),
        }
        writer.write(json.dumps(ask).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("the prefill closed the handoff connection")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError(f"unexpected handoff reply {line!r}")
        return reply
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _refusal(handoff: DecodeHandoff, reply: dict[str, Any]) -> KvTransferError:
    prefill = f"the prefill at {handoff.host}:{handoff.port}"
    status = reply.get("status")
    if status == "aborted":
        return KvTransferError(
            grpc.StatusCode.ABORTED,
            f"{prefill} dropped the KV of {handoff.label}: its prefill request was aborted",
        )
    if status == "expired":
        return KvTransferError(
            grpc.StatusCode.ABORTED,
            f"{prefill} freed the KV of {handoff.label}: no decode fetched it in time",
        )
    if status == "handed_off":
        return KvTransferError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{prefill} already handed the KV of {handoff.label} to another decode",
        )
    if status == "unknown":
        return KvTransferError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{prefill} holds no KV for {handoff.label} and is not prefilling it",
        )
    detail = reply.get("message") or status
    return KvTransferError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{prefill} cannot hand off the KV of {handoff.label}: {detail}",
    )


async def fetch_kv(handoff: DecodeHandoff, prompt_tokens: int, timeout_s: float) -> dict[str, Any]:
    """The prefill's "ready" reply for `handoff`; raises KvTransferError (ABORTED on timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    retry_s = _RETRY_FIRST_S
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            message = f"KV transfer for {handoff.label} did not arrive within {timeout_s:g}s"
            logger.info("%s (from %s:%d)", message, handoff.host, handoff.port)
            raise KvTimeout(grpc.StatusCode.ABORTED, message)
        try:
            reply = await asyncio.wait_for(
                _ask(handoff, prompt_tokens, remaining), remaining + _REPLY_GRACE_S
            )
        except (OSError, ValueError, TimeoutError) as exc:
            # Not listening yet (the decode is often dispatched with its prefill), restarting,
            # or gone: keep trying until the timeout.
            logger.debug("KV fetch for %s: %s; retrying", handoff.label, exc)
            await asyncio.sleep(min(retry_s, max(deadline - loop.time(), 0.0)))
            retry_s = min(retry_s * 2, _RETRY_MAX_S)
            continue
        status = reply.get("status")
        if status == "ready":
            return reply
        if status != "pending":
            raise _refusal(handoff, reply)


async def _unless_ended(request: SimRequest, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if the request ended first (Abort RPC: its wake is set)."""
    task = asyncio.ensure_future(work)
    ended = asyncio.ensure_future(request.wake.wait())
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (task, ended):
            waiter.cancel()
        await asyncio.wait({task, ended})
    if task.cancelled():
        return None
    return task.result()


# ---- one sim's role ------------------------------------------------------------------------


class KvHandoffs:
    """This sim's side of PD disaggregation, by --role (nothing to do for a regular one)."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.role = options.role
        self.counters = HandoffCounters()
        self.registry = RoomRegistry(options, self.counters) if options.role == "prefill" else None
        self._server: HandoffServer | None = None
        # The bound handoff port of a prefill, and the kv engine id a PD sim reports.
        self.bootstrap_port = 0
        self.engine_id = ""

    async def start(self, grpc_port: int) -> None:
        """Name the engine after its gRPC address and, on a prefill, open the handoff server.

        Raises OSError when the bootstrap port cannot be bound.
        """
        if self.role == "regular":
            return
        host = self.options.host
        # Stable for one sim process (and for a restart on the same address), unique per sim.
        self.engine_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"engine-sim://{host}:{grpc_port}"))
        if self.registry is not None:
            assert self.options.bootstrap_port is not None
            server = HandoffServer(self.registry)
            self.bootstrap_port = await server.start(host, self.options.bootstrap_port)
            self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # ---- prefill ---------------------------------------------------------------------------

    def open_room(self, rank: SimEngine, request: SimRequest, handoff: PrefillHandoff) -> None:
        """Register a PD prefill's room; its completion tells the decode where the KV is."""
        assert self.registry is not None
        room = self.registry.open(request, rank, handoff.room)
        # vLLM's NIXL connector answers a do_remote_decode request with exactly this.
        request.handoff_params = {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.engine_id,
            "remote_request_id": request.params.request_id,
            "remote_block_ids": room.block_ids,
            "remote_host": self.options.host,
            "remote_port": self.bootstrap_port,
            "tp_size": 1,
        }

    def close_room(self, request: SimRequest) -> None:
        if self.registry is not None:
            self.registry.close(request)

    def abort(self, request_id: str) -> None:
        if self.registry is not None:
            self.registry.abort(request_id)

    # ---- decode ----------------------------------------------------------------------------

    async def receive(self, rank: SimEngine, request: SimRequest, handoff: DecodeHandoff) -> None:
        """Fetch a PD decode's KV, spend the transfer time, and queue the request on `rank`.

        Returns early, leaving the request as it is, if it is aborted meanwhile; raises
        KvTransferError when the KV does not come.
        """
        opts = self.options
        try:
            reply = await _unless_ended(
                request,
                fetch_kv(handoff, request.prompt_len, opts.kv_transfer_timeout_ms / 1000.0),
            )
        except KvTimeout:
            self.counters.timed_out += 1
            raise
        except KvTransferError:
            self.counters.failed += 1
            raise
        if reply is None:
            return
        self.counters.received += 1
        rank.kv_receiving(request)
        transfer_ms = request.prompt_len * opts.kv_transfer_ms_per_1k / 1000.0
        record_transfer(rank, request.prompt_len, transfer_ms)
        if transfer_ms > 0:
            transferred = await _unless_ended(request, asyncio.sleep(transfer_ms / 1000.0, True))
            if not transferred:
                return
        first_token_ids = [int(token) for token in reply.get("first_token_ids", ())]
        rank.kv_arrived(request, first_token_ids)
