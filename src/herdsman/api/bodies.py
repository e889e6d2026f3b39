"""Request decoding and the response shapes chat and completions share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from herdsman.api.errors import APIError, api_error, bad_request
from herdsman.api.sse import DONE, ChunkFrames, encode_json
from herdsman.engines import TokenLogprobs
from herdsman.http import BodyWriter, Request, Response, StreamingResponse
from herdsman.observability import METRICS
from herdsman.pipeline.batch import GenerationGroup
from herdsman.pipeline.errors import RequestError
from herdsman.pipeline.generate import Generation
from herdsman.pipeline.postprocess import ChoiceOutput

T = TypeVar("T")


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode_body(body: bytes, type_: type[T]) -> T:
    if not body:
        raise bad_request("the request needs a JSON body")
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        # msgspec decodes a string's bytes with Python's codec, which raises its own error.
        raise bad_request(f"the body is not valid UTF-8: {exc.reason}") from exc
    except RecursionError as exc:
        raise bad_request("the body's JSON is nested too deeply") from exc


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in value
    )


def split_inputs(value: Any, param: str) -> tuple[list[str | list[int]], bool]:
    """An input as OpenAI's APIs take it: a string, a list of token ids, or a batch of either
    (a list of strings or of id lists). Returns the items and whether it was a batch."""
    if isinstance(value, str):
        return [value], False
    if isinstance(value, list) and value:
        if _is_ids(value):
            return [value], False
        if all(isinstance(v, str) for v in value) or all(_is_ids(v) and v for v in value):
            return list(value), True
    raise bad_request(
        f"'{param}' must be a string, a list of token ids, or a non-empty list of strings or of "
        "token id lists",
        param,
    )


# Sticky routing keys, as clients of SMG and of other routers send them.
_ROUTING_KEY_HEADERS = ("x-routing-key", "x-smg-routing-key")


def routing_key(request: Request) -> str | None:
    for name in _ROUTING_KEY_HEADERS:
        value = request.headers.get(name)
        if value:
            return value
    return None


def json_response(payload: object, status: int = 200) -> Response:
    return Response(status, encode_json(payload))


def usage_of(generation: Generation | GenerationGroup) -> dict[str, object]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    usage: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if generation.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": generation.cached_tokens}
    return usage


LogprobsFormat = Callable[[ChoiceOutput, TokenLogprobs], object]


class StreamedIds:
    """vLLM's ``return_token_ids`` on a stream: each chunk of a choice carries the ids output
    since its last chunk; the prompt's ids go out once per choice (completions, in the choice)
    or once per response (chat, beside the choices of the first chunk)."""

    __slots__ = ("_prompts", "_sent")

    def __init__(self, prompts: dict[int, list[int]]) -> None:
        self._prompts = prompts
        self._sent: dict[int, int] = {}

    def chunk(self, choice: ChoiceOutput, *, with_prompt: bool = False) -> bytes:
        ids = choice.token_ids or []
        start = self._sent.get(choice.index)
        self._sent[choice.index] = len(ids)
        extra = b',"token_ids":' + encode_json(ids[start or 0 :])
        if with_prompt and start is None:
            extra = b',"prompt_token_ids":' + encode_json(self._prompts[choice.index]) + extra
        return extra

    def top(self, index: int) -> bytes:
        return b',"prompt_token_ids":' + encode_json(self._prompts[index])


async def sse_body(
    frames: ChunkFrames,
    generation: Generation | GenerationGroup,
    events: AsyncIterator[bytes],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Wrap a stream's frames: an engine failure becomes an error event, then usage and [DONE]."""
    try:
        async for frame in events:
            yield frame
    except (APIError, RequestError) as exc:
        METRICS.stream_errors.inc(labels=(frames.endpoint,))
        error = exc if isinstance(exc, APIError) else api_error(exc)
        yield error.sse_event()
        yield DONE
        return
    if include_usage:
        yield frames.usage(usage_of(generation))
    yield DONE


# One step of a generation as the SSE frame to send (None: nothing to send for it).
FrameStep = Callable[[ChoiceOutput, str, TokenLogprobs | None, str | None], bytes | None]


class PushedFrames:
    """A generation's step sink (Generation.push_to): each step framed as the body's iterator
    frames it, and written straight to the client (BodyWriter)."""

    __slots__ = ("_frame", "_writer")

    def __init__(self, frame: FrameStep, writer: BodyWriter) -> None:
        self._frame = frame
        self._writer = writer

    def ready(self) -> bool:
        return self._writer.body_ready()

    def step(
        self,
        choice: ChoiceOutput,
        text: str,
        logprobs: TokenLogprobs | None,
        finish_reason: str | None,
    ) -> None:
        frame = self._frame(choice, text, logprobs, finish_reason)
        if frame is not None:
            self._writer.write_body(frame)


def streamed(
    body: AsyncIterator[bytes], generation: Generation | GenerationGroup, frame: FrameStep
) -> StreamingResponse:
    """A streamed response; when the generation pushes, its steps are framed by ``frame`` (as
    ``body`` frames them) and written as they come rather than each waking the iterator."""
    if not generation.pushes:
        return StreamingResponse(body)

    def start(writer: BodyWriter) -> None:
        generation.push_to(PushedFrames(frame, writer))

    return StreamingResponse(body, on_start=start)


def text_stream(
    frames: ChunkFrames,
    generation: Generation | GenerationGroup,
    *,
    include_usage: bool,
    announce_role: bool,
    logprobs: LogprobsFormat | None = None,
    echo: dict[int, str] | None = None,
    echo_logprobs: Callable[[ChoiceOutput], object] | None = None,
    ids: StreamedIds | None = None,
) -> StreamingResponse:
    """The streamed response of a chat or completion whose text is sent as it comes.

    With `echo_logprobs`, a choice's echoed prompt waits for its first step: the prompt's
    logprobs arrive with the engine's first output.
    """
    events = _text_frames(frames, generation, announce_role, logprobs, echo, echo_logprobs, ids)
    body = sse_body(frames, generation, events, include_usage=include_usage)
    # A generation that pushes has no logprobs (nor prompt logprobs to echo) and no ids to send.
    return streamed(body, generation, _plain_text_frame(frames))


def _plain_text_frame(frames: ChunkFrames) -> FrameStep:
    """How ``_text_frames`` frames a step without logprobs or ids."""

    def frame(
        choice: ChoiceOutput, text: str, logprobs: TokenLogprobs | None, finish_reason: str | None
    ) -> bytes:
        if finish_reason is None:
            return frames.text(choice.index, text)
        return frames.finish(choice.index, text, finish_reason, choice.matched_stop)

    return frame


async def _text_frames(
    frames: ChunkFrames,
    generation: Generation | GenerationGroup,
    announce_role: bool,
    logprobs: LogprobsFormat | None,
    echo: dict[int, str] | None,
    echo_logprobs: Callable[[ChoiceOutput], object] | None,
    ids: StreamedIds | None,
) -> AsyncIterator[bytes]:
    pending_echo: set[int] = set()
    for n, choice in enumerate(generation.choices):
        if announce_role:
            yield frames.role(choice.index, ids.top(choice.index) if ids and n == 0 else b"")
        if echo and echo.get(choice.index):
            if echo_logprobs is not None:
                pending_echo.add(choice.index)
            else:
                yield frames.text(choice.index, echo[choice.index])
    async for choice, text, token_logprobs, finish_reason in generation.run():
        if pending_echo and choice.index in pending_echo:
            pending_echo.discard(choice.index)
            assert echo is not None and echo_logprobs is not None
            echoed = encode_json(echo_logprobs(choice))
            yield frames.text(choice.index, echo[choice.index], echoed)
        lp = b"null"
        if logprobs is not None and token_logprobs is not None:
            lp = encode_json(logprobs(choice, token_logprobs))
        extra = ids.chunk(choice, with_prompt=not announce_role) if ids is not None else b""
        if finish_reason is None:
            yield frames.text(choice.index, text, lp, extra)
        else:
            yield frames.finish(choice.index, text, finish_reason, choice.matched_stop, lp, extra)


async def run_to_end(generation: Generation | GenerationGroup) -> None:
    async for _ in generation.run():
        pass
