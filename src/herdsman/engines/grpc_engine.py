"""What the two gRPC adapters share: the channel, error mapping, and the Generate stream loop."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import grpc
from google.protobuf.json_format import MessageToDict

from herdsman.engines.base import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineUnavailable,
    ModelInfo,
)

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # One TCP connection per engine is the point: a gateway process multiplexes its streams.
    ("grpc.use_local_subchannel_pool", 1),
]

_UNAVAILABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)


def engine_error(exc: grpc.aio.AioRpcError, *, produced: bool = False) -> EngineError:
    code = exc.code()
    message = f"engine {code.name}: {exc.details() or 'no details'}"
    if code in _UNAVAILABLE_CODES and not produced:
        return EngineUnavailable(message)
    return EngineError(message, code=code.name.lower())


def _final_output(done: Any, take_ids: bool) -> EngineOutput:
    matched = done.WhichOneof("matched_stop")
    return EngineOutput(
        index=done.index,
        token_ids=list(done.output_ids) if take_ids else [],
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        cached_tokens=done.cached_tokens,
        finish_reason=done.finish_reason or "stop",
        matched_token_id=done.matched_token_id if matched == "matched_token_id" else None,
        matched_stop_str=done.matched_stop_str if matched == "matched_stop_str" else None,
    )


class GrpcEngine:
    """Base of the protocol adapters; subclasses supply the proto modules and conversions."""

    backend: ClassVar[str]
    pb2: ClassVar[Any]

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self._channel = channel
        self._stub = self._make_stub(channel)

    def _make_stub(self, channel: grpc.aio.Channel) -> Any:
        raise NotImplementedError

    def _generate_request(self, request: EngineRequest) -> Any:
        raise NotImplementedError

    def _abort_requests(self, request_ids: list[str]) -> list[Any]:
        raise NotImplementedError

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        call = self._stub.Generate(self._generate_request(request))
        produced = False
        # In a streamed generation every token arrives in a chunk; the complete message repeats
        # (vLLM: the last delta) or restates them, so its ids only count when nothing streamed.
        take_final_ids = not request.stream
        try:
            async for response in call:
                if response.HasField("chunk"):
                    chunk = response.chunk
                    produced = True
                    yield EngineOutput(
                        index=chunk.index,
                        token_ids=list(chunk.token_ids),
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        cached_tokens=chunk.cached_tokens,
                    )
                elif response.HasField("complete"):
                    done = response.complete
                    produced = True
                    yield _final_output(done, take_final_ids)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc, produced=produced) from exc
        finally:
            if not call.done():
                call.cancel()

    async def abort(self, request_ids: list[str]) -> None:
        for message in self._abort_requests(request_ids):
            try:
                await self._stub.Abort(message, timeout=5.0)
            except grpc.aio.AioRpcError as exc:
                raise engine_error(exc) from exc

    async def health_check(self, timeout: float) -> bool:
        try:
            response = await self._stub.HealthCheck(self.pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.healthy)

    async def model_info(self) -> ModelInfo:
        try:
            info = await self._stub.GetModelInfo(self.pb2.GetModelInfoRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc) from exc
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
        )

    async def server_info(self) -> dict[str, object]:
        try:
            info = await self._stub.GetServerInfo(self.pb2.GetServerInfoRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc) from exc
        return MessageToDict(info, preserving_proto_field_name=True)

    async def fetch_tokenizer(self) -> tuple[bytes, str]:
        from smg_grpc_proto.generated import common_pb2

        parts: list[bytes] = []
        announced = ""
        try:
            stream = self._stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=120)
            async for chunk in stream:
                parts.append(chunk.data)
                announced = chunk.sha256 or announced
        except grpc.aio.AioRpcError as exc:
            raise engine_error(exc) from exc
        data = b"".join(parts)
        if not announced:
            raise EngineError("engine sent its tokenizer without a sha256")
        if hashlib.sha256(data).hexdigest() != announced.lower():
            raise EngineError("tokenizer bundle from the engine failed its sha256 check")
        return data, announced

    async def close(self) -> None:
        await self._channel.close()
