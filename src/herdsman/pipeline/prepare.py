"""Preparation: from a validated API request to the token ids and sampling the engine gets."""

from __future__ import annotations

import time
from typing import Any

from herdsman.engines import SamplingParams
from herdsman.multimodal.placeholders import expand_placeholders
from herdsman.observability import METRICS, tracing
from herdsman.parsers import registry
from herdsman.parsers.reasoning import thinking_flag
from herdsman.pipeline.constraints import response_format_constraint, tool_choice_constraint
from herdsman.pipeline.context import ServedModel
from herdsman.pipeline.conversation import build_conversation, template_tools, template_variables
from herdsman.pipeline.errors import InvalidRequest
from herdsman.pipeline.generate import GenerationPlan
from herdsman.pipeline.images import ImageInputs
from herdsman.pipeline.parsing import ParserSetup
from herdsman.protocol.openai import ChatCompletionRequest, CompletionRequest, SamplingFields
from herdsman.tokenizer import ChatTemplateError

# The most logprobs per position an engine serves (vLLM's default max_logprobs).
MAX_LOGPROBS = 20


def new_request_id(prefix: str) -> str:
    """``<prefix>-<request id>[-<suffix>]``: holds the HTTP request's id (tracing.py)."""
    return tracing.engine_request_id(prefix)


def render_chat_prompt(model: ServedModel, req: ChatCompletionRequest) -> str:
    template = model.tokenizer.chat_template
    if template is None:
        raise InvalidRequest("this model has no chat template; use /v1/completions", "messages")
    if req.continue_final_message and req.add_generation_prompt:
        raise InvalidRequest(
            "continue_final_message and add_generation_prompt cannot both be true",
            "continue_final_message",
        )
    try:
        return template.render(
            build_conversation(req.messages, template),
            tools=template_tools(req.tools),
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            extra=_template_variables(req),
        )
    except ChatTemplateError as exc:
        raise InvalidRequest(str(exc), "messages") from exc


def _template_variables(req: ChatCompletionRequest) -> dict[str, Any]:
    return template_variables(req.chat_template_kwargs, req.reasoning_effort)


def _sampling(
    model: ServedModel,
    req: SamplingFields,
    prompt_len: int,
    max_tokens: int | None,
    logprobs: int | None,
) -> SamplingParams:
    room = model.max_context_length - prompt_len
    if room <= 0:
        raise InvalidRequest(
            f"this model's maximum context length is {model.max_context_length} tokens, "
            f"but the prompt has {prompt_len} tokens",
            "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
        )
    # The model's generation_config.json fills what the request leaves unset (vLLM's server does
    # so; its gRPC servicer does not, so it is done here).
    defaults = model.tokenizer.sampling_defaults
    if max_tokens is None and "max_tokens" in defaults:
        max_tokens = min(defaults["max_tokens"], room)
    if max_tokens is not None and max_tokens > room:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, but the prompt has {prompt_len} tokens and this "
            f"model's maximum context length is {model.max_context_length}: at most {room} "
            "tokens can be generated",
            "max_tokens",
        )
    if max_tokens is not None and req.min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_tokens})",
            "min_tokens",
        )
    stop_ids = list(req.stop_token_ids or ())
    if not req.ignore_eos:
        stop_ids.extend(i for i in model.eos_token_ids if i not in stop_ids)
    return SamplingParams(
        max_tokens=room if max_tokens is None else max_tokens,
        temperature=_or_default(req.temperature, defaults, "temperature"),
        top_p=_or_default(req.top_p, defaults, "top_p"),
        top_k=_or_default(req.top_k, defaults, "top_k"),
        min_p=_or_default(req.min_p, defaults, "min_p"),
        frequency_penalty=_or_default(req.frequency_penalty, defaults, "frequency_penalty"),
        presence_penalty=_or_default(req.presence_penalty, defaults, "presence_penalty"),
        repetition_penalty=_or_default(req.repetition_penalty, defaults, "repetition_penalty"),
        seed=req.seed,
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        n=req.n,
        logprobs=logprobs,
        logit_bias=_logit_bias(model, req.logit_bias),
    )


def _or_default(value: Any, defaults: dict[str, Any], name: str) -> Any:
    return value if value is not None else defaults.get(name)


def _stop_ids_hidden(sampling: SamplingParams, *, keep: bool) -> frozenset[int]:
    """Ids whose text is never shown: the engine ends a choice on the first of them it emits
    (and cannot emit one before min_tokens), so it is the choice's last token, which vLLM leaves
    out of the text unless the stop is to be kept in the output."""
    return frozenset() if keep else frozenset(sampling.stop_token_ids)


def _logit_bias(model: ServedModel, bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    vocab = model.tokenizer.vocab_size
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= vocab:
            raise InvalidRequest(
                f"logit_bias keys must be token ids in [0, {vocab}); got {key!r}", "logit_bias"
            )
        out[int(key)] = value
    return out


def _stops(req: SamplingFields) -> list[str]:
    if req.stop is None:
        return []
    return [req.stop] if isinstance(req.stop, str) else [s for s in req.stop if s]


async def prepare_chat(
    model: ServedModel,
    req: ChatCompletionRequest,
    images: ImageInputs | None = None,
    max_choices: int = 256,
) -> GenerationPlan:
    if req.n > max_choices:
        raise InvalidRequest(f"n is {req.n}; this gateway allows at most {max_choices}", "n")
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", "top_logprobs")
    tool_constraint, named = tool_choice_constraint(req.tools, req.tool_choice)
    format_constraint = response_format_constraint(req.response_format, req.extensions)
    if tool_constraint and format_constraint:
        raise InvalidRequest("tool_choice and response_format cannot both constrain the output")
    started = time.perf_counter()
    prompt = render_chat_prompt(model, req)
    rendered = time.perf_counter()
    input_ids = await model.tokenizer.encode_async(prompt, add_special_tokens=False)
    tokenized = time.perf_counter()
    METRICS.stage.observe(rendered - started, ("template",))
    METRICS.stage.observe(tokenized - rendered, ("tokenize",))
    if tracing.enabled():
        tracing.stage("template", started, rendered)
        tracing.stage("tokenize", rendered, tokenized, {"herdsman.prompt_tokens": len(input_ids)})
    if images is not None:
        input_ids = _expand_images(input_ids, images)
    max_tokens = req.max_completion_tokens or req.max_tokens
    sampling = _sampling(
        model, req, len(input_ids), max_tokens, (req.top_logprobs or 0) if req.logprobs else None
    )
    sampling.constraint = tool_constraint or format_constraint
    parsers = _parser_setup(
        model, req, prompt, constrained=tool_constraint is not None, named=named
    )
    keep_special = parsers is not None and any(
        cls is not None and cls.needs_special_tokens for cls in (parsers.reasoning, parsers.tools)
    )
    keep_stop = req.include_stop_str_in_output or req.no_stop_trim
    return GenerationPlan(
        request_id=new_request_id("chatcmpl"),
        input_ids=input_ids,
        sampling=sampling,
        stops=_stops(req),
        include_stop_str_in_output=req.include_stop_str_in_output or req.no_stop_trim,
        return_token_ids=req.return_token_ids,
        # Parsers that read special-token markers see them; EOS and stop ids still stay hidden.
        skip_special_tokens=req.skip_special_tokens and not keep_special,
        hidden_ids=_stop_ids_hidden(sampling, keep=keep_stop and not keep_special),
        stream=req.stream,
        parsers=parsers,
        images=images,
    )


def _expand_images(input_ids: list[int], images: ImageInputs) -> list[int]:
    """Each image's one template token becomes as many as its processed size needs."""
    if input_ids.count(images.image_token_id) != len(images.counts):
        raise InvalidRequest(
            "the chat template placed a different number of image tokens than there are images",
            "messages",
        )
    expanded, images.placeholders = expand_placeholders(
        input_ids, images.image_token_id, images.counts
    )
    return expanded


def _parser_setup(
    model: ServedModel,
    req: ChatCompletionRequest,
    prompt: str,
    *,
    constrained: bool = False,
    named: str | None = None,
) -> ParserSetup | None:
    reasoning = (
        registry.get_reasoning_parser(model.reasoning_parser)
        if model.reasoning_parser and req.separate_reasoning
        else None
    )
    tools = (
        registry.get_tool_call_parser(model.tool_call_parser)
        if model.tool_call_parser and req.tools and req.tool_choice != "none"
        else None
    )
    if reasoning is None and tools is None and not constrained:
        return None
    return ParserSetup(
        reasoning=reasoning,
        tools=tools,
        tool_specs=req.tools,
        thinking=thinking_flag(_template_variables(req)),
        prompt_in_reasoning=reasoning.prompt_in_reasoning(prompt) if reasoning else False,
        constrained=constrained,
        function=named,
    )


async def prepare_completion(
    model: ServedModel, req: CompletionRequest, max_choices: int = 256
) -> tuple[str, list[GenerationPlan]]:
    """The response id, and one plan per prompt of the (possibly batched) request."""
    if req.suffix:
        raise InvalidRequest("suffix is not supported", "suffix")
    if req.best_of not in (None, 1, req.n):
        raise InvalidRequest("best_of different from n is not supported", "best_of")
    started = time.perf_counter()
    given = _split_prompts(req.prompt)
    if len(given) * req.n > max_choices:
        raise InvalidRequest(
            f"{len(given)} prompts x n={req.n} asks for {len(given) * req.n} choices; "
            f"this gateway allows at most {max_choices} per request",
            "prompt" if len(given) > 1 else "n",
        )
    prompts = [await _completion_ids(model, p) for p in given]
    tokenized = time.perf_counter()
    METRICS.stage.observe(tokenized - started, ("tokenize",))
    if tracing.enabled():
        tracing.stage("tokenize", started, tokenized, {"herdsman.prompts": len(prompts)})
    # Completions show the sampled token plus the `logprobs` best (OpenAI's definition, and
    # vLLM's). The engine's list starts with the sampled token and holds `logprobs` entries in
    # all, so it is asked for one more; vLLM's servers cap a request at 20.
    engine_logprobs = None if req.logprobs is None else min(req.logprobs + 1, MAX_LOGPROBS)
    request_id = new_request_id("cmpl")
    plans = [
        GenerationPlan(
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
            input_ids=input_ids,
            sampling=_sampling(model, req, len(input_ids), req.max_tokens, engine_logprobs),
            stops=_stops(req),
            include_stop_str_in_output=req.include_stop_str_in_output or req.no_stop_trim,
            return_token_ids=req.return_token_ids,
            skip_special_tokens=req.skip_special_tokens,
            stream=req.stream,
            first_index=i * req.n,
            echo=_echo_text(model, prompt, input_ids) if req.echo else "",
        )
        for i, (prompt, input_ids) in enumerate(zip(given, prompts, strict=True))
    ]
    keep_stop = req.include_stop_str_in_output or req.no_stop_trim
    for plan in plans:
        plan.hidden_ids = _stop_ids_hidden(plan.sampling, keep=keep_stop)
    if req.echo and req.logprobs is not None:
        # The echoed prompt comes with its tokens' logprobs, as the engine computes them.
        for plan in plans:
            plan.sampling.prompt_logprobs = engine_logprobs
    return request_id, plans


def _echo_text(model: ServedModel, prompt: Any, input_ids: list[int]) -> str:
    """The prompt as the client sent it (as vLLM echoes: no BOS text); ids are decoded."""
    if isinstance(prompt, str):
        return prompt
    return model.tokenizer.decode(input_ids, skip_special_tokens=False)


def _split_prompts(prompt: Any) -> list[Any]:
    """A prompt is a string, a list of ids, or a batch: a list of strings or of id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return [prompt]
    if all(isinstance(p, (str, list)) for p in prompt):
        return list(prompt)
    raise InvalidRequest(
        "prompt must be a string, a list of token ids, or a list of either", "prompt"
    )


async def _completion_ids(model: ServedModel, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("prompt must not be empty", "prompt")
        return await model.tokenizer.encode_async(prompt, add_special_tokens=True)
    vocab = model.tokenizer.vocab_size
    if (
        not prompt
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        or any(t < 0 or t >= vocab for t in prompt)
    ):
        raise InvalidRequest(
            f"a token id prompt must be a non-empty list of ids in [0, {vocab})", "prompt"
        )
    return list(prompt)
