"""POST /generate: SGLang's native API, for clients written against an SGLang server.

The same pipeline as /v1/completions; only the shapes differ: ``sampling_params`` in SGLang's
names, the text and ``output_ids`` whole in every streamed event (SGLang streams cumulative
output), and a ``meta_info`` per output with the finish reason as an object, token counts and,
with ``return_logprob``, logprobs as ``[logprob, token_id, text]`` triples.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from herdsman.api.bodies import (
    decode_body,
    json_response,
    routing_key,
    run_to_end,
    split_inputs,
)
from herdsman.api.errors import APIError, api_error, bad_request
from herdsman.api.sse import DONE, encode_json
from herdsman.engines import SamplingParams
from herdsman.http import Request, Response, StreamingResponse
from herdsman.pipeline.batch import GenerationGroup
from herdsman.pipeline.context import ServedModel, ServingContext
from herdsman.pipeline.errors import RequestError
from herdsman.pipeline.generate import Generation, GenerationPlan
from herdsman.pipeline.postprocess import ChoiceOutput
from herdsman.pipeline.prepare import MAX_LOGPROBS, new_request_id


class NativeSampling(msgspec.Struct, kw_only=True):
    max_new_tokens: Annotated[int, Meta(ge=0)] | None = 128
    min_new_tokens: Annotated[int, Meta(ge=0)] = 0
    temperature: Annotated[float, Meta(ge=0.0)] = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Meta(ge=-1)] = -1
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] = 0.0
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=2.0)] = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    n: Annotated[int, Meta(ge=1, le=128)] = 1
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    sampling_seed: int | None = None


class NativeGenerateRequest(msgspec.Struct, kw_only=True):
    text: str | list[str] | None = None
    # Token ids, or a batch of id lists (checked in _prompts: msgspec takes one list type).
    input_ids: list[Any] | None = None
    sampling_params: NativeSampling | None = None
    stream: bool = False
    return_logprob: bool = False
    # -1: logprobs of the output only; k >= 0: of the prompt from its k-th token too.
    logprob_start_len: int = -1
    top_logprobs_num: Annotated[int, Meta(ge=0, le=MAX_LOGPROBS)] = 0
    return_text_in_logprobs: bool = False
    rid: str | None = None
    model: str | None = None


async def native_generate(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    body = decode_body(request.body, NativeGenerateRequest)
    model = ctx.served(body.model, "generate")
    model.require("generate", "/generate")
    prompts = await _prompts(model, body)
    params = body.sampling_params or NativeSampling()
    if len(prompts) * params.n > ctx.limits.max_choices:
        raise bad_request(
            f"{len(prompts)} prompts x n={params.n}; this gateway allows at most "
            f"{ctx.limits.max_choices}",
            "sampling_params",
        )
    request_id = body.rid or new_request_id("gen")
    key = routing_key(request)
    plans = []
    for i, ids in enumerate(prompts):
        plan = _plan(
            model, body, params, ids, f"{request_id}-{i}" if len(prompts) > 1 else request_id
        )
        plan.first_index = i * params.n
        plan.routing_key = key
        plans.append(plan)
    group = GenerationGroup([Generation(ctx, model, plan, request.received_at) for plan in plans])
    await group.start()
    outputs = _Outputs(model, body, group, request_id, request.received_at)
    # A list of prompts, or several samples, is answered with a list of outputs (SGLang's shape).
    outputs.batched = _is_batch(body) or params.n > 1
    if body.stream:
        return StreamingResponse(outputs.events())
    await run_to_end(group)
    results = [outputs.result(c) for c in group.choices]
    return json_response(results if outputs.batched else results[0])


def _is_batch(body: NativeGenerateRequest) -> bool:
    if body.text is not None:
        return isinstance(body.text, list)
    return bool(body.input_ids) and isinstance(body.input_ids[0], list)


async def _prompts(model: ServedModel, body: NativeGenerateRequest) -> list[list[int]]:
    if (body.text is None) == (body.input_ids is None):
        raise bad_request("send either 'text' or 'input_ids'", "text")
    if body.text is not None:
        texts = [body.text] if isinstance(body.text, str) else body.text
        if not texts:
            raise bad_request("'text' must not be empty", "text")
        return [await model.tokenizer.encode_async(t, add_special_tokens=True) for t in texts]
    items, _batch = split_inputs(body.input_ids, "input_ids")
    vocab = model.tokenizer.vocab_size
    batch: list[list[int]] = []
    for prompt in items:
        if isinstance(prompt, str) or not prompt:
            raise bad_request("'input_ids' must hold token ids, or lists of them", "input_ids")
        if any(t >= vocab for t in prompt):
            raise bad_request(f"token ids must be in [0, {vocab})", "input_ids")
        batch.append(prompt)
    return batch


def _plan(
    model: ServedModel,
    body: NativeGenerateRequest,
    p: NativeSampling,
    ids: list[int],
    request_id: str,
) -> GenerationPlan:
    room = model.max_context_length - len(ids)
    if room <= 0:
        raise bad_request(
            f"this model's maximum context length is {model.max_context_length} tokens, but the "
            f"prompt has {len(ids)} tokens",
            "text",
        )
    max_tokens = room if p.max_new_tokens is None else p.max_new_tokens
    if max_tokens > room:
        raise bad_request(
            f"max_new_tokens is {max_tokens}, but the prompt has {len(ids)} tokens and this "
            f"model's maximum context length is {model.max_context_length}",
            "sampling_params",
        )
    if max_tokens == 0:
        raise bad_request("max_new_tokens must be at least 1 here", "sampling_params")
    stop_ids = list(p.stop_token_ids or ())
    if not p.ignore_eos:
        stop_ids.extend(i for i in model.eos_token_ids if i not in stop_ids)
    constraints = [
        (kind, value)
        for kind, value in (("json_schema", p.json_schema), ("regex", p.regex), ("grammar", p.ebnf))
        if value is not None
    ]
    if len(constraints) > 1:
        raise bad_request("at most one of json_schema, regex and ebnf", "sampling_params")
    logprobs = body.top_logprobs_num if body.return_logprob else None
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        min_p=p.min_p,
        frequency_penalty=p.frequency_penalty,
        presence_penalty=p.presence_penalty,
        repetition_penalty=p.repetition_penalty,
        seed=p.sampling_seed,
        stop_token_ids=stop_ids,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_new_tokens,
        n=p.n,
        logprobs=logprobs,
        prompt_logprobs=logprobs if body.return_logprob and body.logprob_start_len >= 0 else None,
        constraint=constraints[0] if constraints else None,
    )
    stops = [p.stop] if isinstance(p.stop, str) else [s for s in p.stop or () if s]
    return GenerationPlan(
        request_id=request_id,
        input_ids=ids,
        sampling=sampling,
        stops=stops,
        include_stop_str_in_output=p.no_stop_trim,
        skip_special_tokens=p.skip_special_tokens,
        hidden_ids=frozenset() if p.no_stop_trim else frozenset(stop_ids),
        return_token_ids=True,
        stream=body.stream,
    )


class _Outputs:
    """SGLang's output objects for the choices of one request."""

    def __init__(
        self,
        model: ServedModel,
        body: NativeGenerateRequest,
        group: GenerationGroup,
        request_id: str,
        received_at: float,
    ) -> None:
        self._model = model
        self._body = body
        self._group = group
        self._request_id = request_id
        self._received_at = received_at
        self._max_tokens = {
            c.index: g.plan.sampling.max_tokens for g in group.generations for c in g.choices
        }
        self._generations = {c.index: g for g in group.generations for c in g.choices}
        self._text: dict[int, list[str]] = {c.index: [] for c in group.choices}
        self._logprobs: dict[int, list[Any]] = {c.index: [] for c in group.choices}
        self.batched = False

    def result(self, choice: ChoiceOutput, text: str | None = None) -> dict[str, Any]:
        if text is None:
            text = "".join(choice.text or ())
        generation = self._generations[choice.index]
        meta: dict[str, Any] = {
            "id": self._request_id if not self.batched else f"{self._request_id}-{choice.index}",
            "finish_reason": self._finish(choice),
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": choice.token_count,
            "cached_tokens": generation.cached_tokens,
            "e2e_latency": time.perf_counter() - self._received_at,
        }
        if self._body.return_logprob:
            runs = choice.logprobs if choice.logprobs is not None else self._logprobs[choice.index]
            meta.update(self._logprob_fields(choice, runs))
        result = {"text": text, "output_ids": list(choice.token_ids or ()), "meta_info": meta}
        if self.batched:
            result["index"] = choice.index
        return result

    def _finish(self, choice: ChoiceOutput) -> dict[str, Any] | None:
        reason = choice.finish_reason
        if reason is None:
            return None
        if reason == "length":
            return {"type": "length", "length": self._max_tokens[choice.index]}
        return {"type": "stop", "matched": choice.matched_stop}

    def _triple(self, logprob: float | None, token_id: int) -> list[Any]:
        text = (
            self._model.tokenizer.token_text(token_id)
            if self._body.return_text_in_logprobs
            else None
        )
        return [logprob, token_id, text]

    def _logprob_fields(self, choice: ChoiceOutput, runs: list[Any]) -> dict[str, Any]:
        out = [
            self._triple(lp, t)
            for run in runs
            for t, lp in zip(run.token_ids, run.logprobs, strict=True)
        ]
        fields: dict[str, Any] = {"output_token_logprobs": out}
        if self._body.top_logprobs_num:
            fields["output_top_logprobs"] = [
                [self._triple(lp, t) for t, lp in top] for run in runs for top in run.top
            ]
        prompt = choice.prompt_logprobs
        if prompt is not None:
            start = max(0, self._body.logprob_start_len)
            fields["input_token_logprobs"] = [
                self._triple(lp, t)
                for t, lp in list(zip(prompt.token_ids, prompt.logprobs, strict=True))[start:]
            ]
            if self._body.top_logprobs_num:
                fields["input_top_logprobs"] = [
                    [self._triple(lp, t) for t, lp in top] or None for top in prompt.top[start:]
                ]
        return fields

    async def events(self) -> AsyncIterator[bytes]:
        """SSE events, each with its choice's whole output so far, then [DONE]."""
        try:
            async for choice, delta, logprobs, _finish in self._group.run():
                self._text[choice.index].append(delta)
                if logprobs is not None:
                    self._logprobs[choice.index].append(logprobs)
                payload = self.result(choice, "".join(self._text[choice.index]))
                yield b"data: " + encode_json(payload) + b"\n\n"
        except (APIError, RequestError) as exc:
            error = exc if isinstance(exc, APIError) else api_error(exc)
            yield error.sse_event()
        yield DONE
