"""What the two gRPC adapters share: the calls, the error mapping and the Generate stream loop."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, ClassVar

from google.protobuf.json_format import MessageToDict
from smg_grpc_proto.generated import common_pb2

from herdsman.engines.base import (
    EmbedOutput,
    EmbedRequest,
    EngineBusy,
    EngineDeadlineExceeded,
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    ModelInfo,
    OutputSink,
    PromptLogprobs,
    TokenLogprobs,
)
from herdsman.engines.embed_wire import EmbedResponseDecoder
from herdsman.engines.transport import RpcError, StatusCode, Transport
from herdsman.engines.transport.base import DECLINED, Listener
from herdsman.observability.tracing import engine_metadata
from herdsman.routing.load import WorkerLoad

try:
    from herdsman.engines._varint import stream_chunk, tokenized_field
except ImportError:  # not built: protobuf packs the ids and parses every message
    stream_chunk = tokenized_field = None


def _listener(plain: Callable[[bytes], EngineOutput | None], push: OutputSink) -> Listener:
    """The transport's listener for a push sink: a plain chunk goes to the sink; anything else
    is declined, for the generator (which reads it again: rare)."""

    def listen(data: bytes) -> int:
        output = plain(data)
        return DECLINED if output is None else push(output)

    return listen


def engine_error(exc: RpcError) -> EngineError:
    message = f"engine {exc.code.name}: {exc.details or 'no details'}"
    if exc.refused or exc.code == StatusCode.RESOURCE_EXHAUSTED:
        return EngineBusy(message)
    if exc.code == StatusCode.UNAVAILABLE:
        return EngineUnavailable(message)
    if exc.code == StatusCode.DEADLINE_EXCEEDED:
        return EngineDeadlineExceeded(message)
    return EngineError(message, code=exc.code.name.lower())


def _logprobs(message: Any) -> TokenLogprobs | None:
    """The proto's OutputLogProbs (same shape in both protos) as a TokenLogprobs."""
    if not message.HasField("output_logprobs"):
        return None
    lp = message.output_logprobs
    return TokenLogprobs(
        token_ids=list(lp.token_ids),
        logprobs=list(lp.token_logprobs),
        top=[list(zip(t.token_ids, t.values, strict=False)) for t in lp.top_logprobs],
    )


def _prompt_logprobs(message: Any) -> PromptLogprobs | None:
    """The proto's InputLogProbs (same shape in both protos) as a PromptLogprobs."""
    if not message.HasField("input_logprobs"):
        return None
    lp = message.input_logprobs
    if not lp.token_ids:
        return None
    return PromptLogprobs(
        token_ids=list(lp.token_ids),
        logprobs=[v.value if v.HasField("value") else None for v in lp.token_logprobs],
        top=[list(zip(t.token_ids, t.values, strict=False)) for t in lp.top_logprobs],
    )


def _scheduler_load(load: Any, now: float) -> WorkerLoad:
    """One SchedulerLoad of GetLoads (same core fields in both protos) as a WorkerLoad."""
    uncached: int | None = load.num_waiting_uncached_tokens
    if not uncached and load.num_waiting_reqs:
        # The field has no presence. A waiting request always has an uncached token (an engine
        # recomputes a prompt's last token), so 0 beside waiting requests means "not reported".
        uncached = None
    return WorkerLoad(
        running=load.num_running_reqs,
        waiting=load.num_waiting_reqs,
        waiting_uncached_tokens=uncached,
        token_usage=load.token_usage,
        max_running=load.max_running_requests,
        cache_hit_rate=load.cache_hit_rate,
        updated_at=now,
        source="poll",
    )


def _final_output(done: Any, take_ids: bool, want_prompt_logprobs: bool) -> EngineOutput:
    matched = done.WhichOneof("matched_stop")
    return EngineOutput(
        index=done.index,
        token_ids=list(done.output_ids) if take_ids else [],
        logprobs=_logprobs(done) if take_ids else None,
        prompt_logprobs=_prompt_logprobs(done) if want_prompt_logprobs else None,
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        cached_tokens=done.cached_tokens,
        finish_reason=done.finish_reason or "stop",
        matched_token_id=done.matched_token_id if matched == "matched_token_id" else None,
        matched_stop_str=done.matched_stop_str if matched == "matched_stop_str" else None,
        kv_transfer_params=_kv_transfer_params(done),
    )


def _kv_transfer_params(done: Any) -> str | None:
    """A vLLM prefill's handoff (only vllm_engine.proto has it): the JSON field, else the legacy
    typed one as the same JSON."""
    if getattr(done, "kv_transfer_params_json", ""):
        return str(done.kv_transfer_params_json)
    legacy = getattr(done, "kv_transfer_params", None)
    if legacy is not None and legacy.remote_host:
        return json.dumps(
            {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_host": legacy.remote_host,
                "remote_port": legacy.remote_port,
            }
        )
    return None


class Serialized:
    """A message already serialized, where the transports expect a protobuf message."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:  # protobuf's name: what the transports call
        return self._data


class GenerateDecoder:
    """GenerateResponse's ``FromString`` for a Generate stream. A plain streamed chunk (new ids
    and counts: the message of every token) is read in C straight into an EngineOutput, ~1 us
    instead of ~5 us for upb's parse and the attribute reads after it; any other message (the
    complete one, logprobs, a field the C reader does not know) is protobuf's message."""

    __slots__ = ("_fields", "_message")

    def __init__(self, message: Any, chunk_fields: tuple[int, int, int]) -> None:
        self._message = message
        self._fields = chunk_fields

    def FromString(self, data: bytes) -> Any:  # protobuf's name: what the transports call
        output = self.plain(data)
        return self._message.FromString(data) if output is None else output

    def plain(self, data: bytes) -> EngineOutput | None:
        """A plain streamed chunk read in C; None for any other message."""
        fields = stream_chunk(data, *self._fields)
        if fields is None:
            return None
        index, token_ids, prompt_tokens, completion_tokens, cached_tokens = fields
        return EngineOutput(
            index=index,
            token_ids=token_ids,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
        )


class GrpcEngine:
    """Base of the protocol adapters; subclasses supply the service, messages and conversions."""

    backend: ClassVar[str]
    # EmbedResponse's field numbers differ between the protos; see embed_wire.
    _embed_decoder: ClassVar[EmbedResponseDecoder]
    pooling_tasks: ClassVar[frozenset[str]]
    service: ClassVar[str]
    pb2: ClassVar[Any]
    # For GenerateDecoder: GenerateResponse's chunk field, the chunk's index field, and a
    # top-level field beside the chunk to ignore (0: none).
    chunk_fields: ClassVar[tuple[int, int, int]]

    def __init__(self, address: str, transport: Transport) -> None:
        self.address = address
        self._transport = transport
        self._responses: Any = (
            GenerateDecoder(self.pb2.GenerateResponse, self.chunk_fields)
            if stream_chunk is not None
            else self.pb2.GenerateResponse
        )
        self._methods = {
            name: f"/{self.service}/{name}"
            for name in (
                "Generate",
                "Embed",
                "Abort",
                "HealthCheck",
                "GetModelInfo",
                "GetServerInfo",
                "GetTokenizer",
                "GetLoads",
                "SubscribeKvEvents",
            )
        }

    def _generate_request(self, request: EngineRequest, *, with_ids: bool = True) -> Any:
        raise NotImplementedError

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        raise NotImplementedError

    def _embed_request(self, request: EmbedRequest) -> Any:
        raise NotImplementedError

    def _labels(self, info: Any) -> tuple[int, dict[str, str]]:
        """A classifier's label count and names, where the protocol states them."""
        return 0, {}

    async def _unary(
        self, name: str, request: Any, response_type: Any, timeout: float, traced: bool = False
    ) -> Any:
        metadata = engine_metadata() if traced else None
        try:
            if metadata is None:
                return await self._transport.unary(
                    self._methods[name], request, response_type, timeout
                )
            return await self._transport.unary(
                self._methods[name], request, response_type, timeout, metadata=metadata
            )
        except RpcError as exc:
            raise engine_error(exc) from exc

    def _generate_wire(self, request: EngineRequest) -> Any:
        """The GenerateRequest to send: the message without its prompt ids, serialized, then the
        ids packed in C as its ``tokenized`` field (2 in both protocols). A field after the
        others is valid protobuf, parsed as if in order; ~10 us instead of upb's ~125 us for a
        2.4k-token prompt."""
        ids = request.input_ids
        if tokenized_field is not None and type(ids) is list and ids:
            try:
                tail = tokenized_field(2, ids)
            except (TypeError, OverflowError):
                pass  # not uint32 ids: protobuf says what is wrong
            else:
                head = self._generate_request(request, with_ids=False).SerializeToString()
                return Serialized(head + tail)
        return self._generate_request(request)

    async def generate(
        self, request: EngineRequest, push: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        options: dict[str, Any] = {}
        metadata = engine_metadata()  # the W3C trace context, if any
        if metadata is not None:
            options["metadata"] = metadata
        if push is not None and isinstance(self._responses, GenerateDecoder):
            options["listener"] = _listener(self._responses.plain, push)
        responses = self._transport.stream(
            self._methods["Generate"],
            self._generate_wire(request),
            self._responses,
            timeout=request.timeout,
            **options,
        )
        # In a streamed generation every token arrives in a chunk; the complete message repeats
        # (vLLM: the last delta) or restates them, so its ids only count when nothing streamed.
        take_final_ids = not request.stream
        want_logprobs = request.sampling.logprobs is not None
        want_prompt_logprobs = request.sampling.prompt_logprobs is not None
        try:
            async for response in responses:
                if type(response) is EngineOutput:  # a plain chunk, read by GenerateDecoder
                    yield response
                elif response.HasField("chunk"):
                    chunk = response.chunk
                    yield EngineOutput(
                        index=chunk.index,
                        token_ids=list(chunk.token_ids),
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        cached_tokens=chunk.cached_tokens,
                        logprobs=_logprobs(chunk) if want_logprobs else None,
                        prompt_logprobs=_prompt_logprobs(chunk) if want_prompt_logprobs else None,
                    )
                elif response.HasField("complete"):
                    yield _final_output(response.complete, take_final_ids, want_prompt_logprobs)
        except RpcError as exc:
            raise engine_error(exc) from exc
        finally:
            await responses.aclose()

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        output: EmbedOutput = await self._unary(
            "Embed",
            self._embed_request(request),
            self._embed_decoder,
            request.timeout if request.timeout is not None else 600.0,
            traced=True,
        )
        return output

    async def abort(self, request_ids: list[str]) -> None:
        for message in self._abort_requests(request_ids):
            await self._unary("Abort", message, self.pb2.AbortResponse, 5.0)

    async def health_check(self, timeout: float) -> bool:
        try:
            response = await self._unary(
                "HealthCheck", self.pb2.HealthCheckRequest(), self.pb2.HealthCheckResponse, timeout
            )
        except EngineError:
            return False
        return bool(response.healthy)

    async def model_info(self) -> ModelInfo:
        info = await self._unary(
            "GetModelInfo", self.pb2.GetModelInfoRequest(), self.pb2.GetModelInfoResponse, 10.0
        )
        labels = self._labels(info)
        return ModelInfo(
            model_path=info.model_path,
            served_model_name=info.served_model_name,
            tokenizer_path=info.tokenizer_path,
            model_type=info.model_type,
            architectures=list(info.architectures),
            max_context_length=info.max_context_length,
            vocab_size=info.vocab_size,
            eos_token_ids=list(info.eos_token_ids),
            bos_token_id=info.bos_token_id or None,
            supports_vision=info.supports_vision,
            is_generation=info.is_generation,
            num_labels=labels[0],
            id2label=labels[1],
        )

    async def server_info(self) -> dict[str, object]:
        info = await self._unary(
            "GetServerInfo", self.pb2.GetServerInfoRequest(), self.pb2.GetServerInfoResponse, 10.0
        )
        return MessageToDict(info, preserving_proto_field_name=True)

    async def fetch_tokenizer(self) -> tuple[bytes, str]:
        parts: list[bytes] = []
        announced = ""
        chunks = self._transport.stream(
            self._methods["GetTokenizer"],
            common_pb2.GetTokenizerRequest(),
            common_pb2.GetTokenizerChunk,
            timeout=120,
        )
        try:
            async for chunk in chunks:
                parts.append(chunk.data)
                announced = chunk.sha256 or announced
        except RpcError as exc:
            raise engine_error(exc) from exc
        data = b"".join(parts)
        if not announced:
            raise EngineError("engine sent its tokenizer without a sha256")
        if hashlib.sha256(data).hexdigest() != announced.lower():
            raise EngineError("tokenizer bundle from the engine failed its sha256 check")
        return data, announced

    async def subscribe_kv_events(
        self, start_sequence: int
    ) -> AsyncIterator[common_pb2.KvEventBatch]:
        # No deadline: the stream lives as long as the engine; keepalive PINGs still watch over
        # the connection while it is silent.
        batches = self._transport.stream(
            self._methods["SubscribeKvEvents"],
            common_pb2.SubscribeKvEventsRequest(
                start_sequence_number=start_sequence, load_records_before_first_batch=True
            ),
            common_pb2.KvEventBatch,
            timeout=None,
        )
        try:
            async for batch in batches:
                yield batch
        except RpcError as exc:
            raise engine_error(exc) from exc
        finally:
            await batches.aclose()

    async def get_loads(self) -> list[tuple[int, WorkerLoad]]:
        response = await self._unary(
            "GetLoads", self.pb2.GetLoadsRequest(), self.pb2.GetLoadsResponse, 5.0
        )
        now = time.monotonic()
        return [(load.dp_rank, _scheduler_load(load, now)) for load in response.loads]

    async def close(self) -> None:
        await self._transport.close()
