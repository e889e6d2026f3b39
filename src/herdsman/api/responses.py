"""Request decoding and the response shapes chat and completions share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import msgspec

from herdsman.api.errors import APIError, bad_request
from herdsman.api.sse import DONE, ChunkFrames, encode_json
from herdsman.http import Response
from herdsman.observability import METRICS
from herdsman.pipeline.generate import Generation

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


def json_response(payload: object, status: int = 200) -> Response:
    return Response(status, encode_json(payload))


def usage_of(generation: Generation) -> dict[str, object]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    usage: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if generation.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": generation.cached_tokens}
    return usage


async def stream_events(
    frames: ChunkFrames, generation: Generation, *, include_usage: bool, announce_role: bool
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat or completion; an engine failure becomes an error event."""
    if announce_role:
        for choice in generation.choices:
            yield frames.role(choice.index)
    try:
        async for choice, text in generation.run():
            if choice.finish_reason is None:
                yield frames.text(choice.index, text)
            else:
                yield frames.finish(choice.index, text, choice.finish_reason, choice.matched_stop)
    except APIError as exc:
        METRICS.stream_errors.inc(labels=(frames.endpoint,))
        yield exc.sse_event()
        yield DONE
        return
    if include_usage:
        yield frames.usage(usage_of(generation))
    yield DONE


async def run_to_end(generation: Generation) -> None:
    async for _ in generation.run():
        pass
