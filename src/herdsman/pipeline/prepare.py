"""Preparation: from a validated API request to the token ids and sampling the engine gets."""

from __future__ import annotations

import time
import uuid
from typing import Any

from herdsman.api.errors import APIError, bad_request
from herdsman.api.protocol import ChatCompletionRequest, CompletionRequest, _SamplingFields
from herdsman.engines import SamplingParams
from herdsman.observability import METRICS
from herdsman.pipeline.context import ServedModel
from herdsman.pipeline.generate import GenerationPlan
from herdsman.tokenizer import ChatTemplateError

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _check_unsupported(req: _SamplingFields) -> None:
    if req.logprobs not in (None, False, 0):
        raise bad_request("logprobs are not supported yet", param="logprobs")


def _text_of(content: Any, index: int) -> str | None:
    """Message content as the template sees it: a string (text parts joined by newlines)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(
            "content must be a string or a list of parts", f"messages[{index}].content"
        )
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request("each content part needs a 'type'", f"messages[{index}].content")
        if part["type"] != "text":
            raise bad_request(
                f"content parts of type {part['type']!r} are not supported by this model",
                f"messages[{index}].content",
            )
        if not isinstance(part.get("text"), str):
            raise bad_request("a text part needs a string 'text'", f"messages[{index}].content")
        texts.append(part["text"])
    return "\n".join(texts)


def _normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(f"unknown role {role!r}", f"messages[{i}].role")
        if "content" not in message and not message.get("tool_calls"):
            raise bad_request("a message needs 'content'", f"messages[{i}].content")
        normalised = dict(message)
        normalised["content"] = _text_of(message.get("content"), i)
        out.append(normalised)
    return out


def render_chat_prompt(model: ServedModel, req: ChatCompletionRequest) -> str:
    template = model.tokenizer.chat_template
    if template is None:
        raise bad_request("this model has no chat template; use /v1/completions", "messages")
    if req.continue_final_message and req.add_generation_prompt:
        raise bad_request(
            "continue_final_message and add_generation_prompt cannot both be true",
            "continue_final_message",
        )
    try:
        return template.render(
            _normalise_messages(req.messages),
            tools=req.tools,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            extra=req.chat_template_kwargs,
        )
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages") from exc


def _sampling(
    model: ServedModel, req: _SamplingFields, prompt_len: int, max_tokens: int | None
) -> SamplingParams:
    room = model.max_context_length - prompt_len
    if room <= 0:
        raise bad_request(
            f"this model's maximum context length is {model.max_context_length} tokens, "
            f"but the prompt has {prompt_len} tokens",
            "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
        )
    if max_tokens is not None and max_tokens > room:
        raise bad_request(
            f"max_tokens is {max_tokens}, but the prompt has {prompt_len} tokens and this "
            f"model's maximum context length is {model.max_context_length}: at most {room} "
            "tokens can be generated",
            "max_tokens",
        )
    stop_ids = list(req.stop_token_ids or ())
    if not req.ignore_eos:
        stop_ids.extend(i for i in model.eos_token_ids if i not in stop_ids)
    return SamplingParams(
        max_tokens=room if max_tokens is None else max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        n=req.n,
    )


def _stops(req: _SamplingFields) -> list[str]:
    if req.stop is None:
        return []
    return [req.stop] if isinstance(req.stop, str) else [s for s in req.stop if s]


def check_model(model: ServedModel, name: str) -> None:
    if name != model.name:
        raise APIError(
            404,
            f"the model '{name}' does not exist; this gateway serves '{model.name}'",
            param="model",
            code="model_not_found",
        )


def prepare_chat(model: ServedModel, req: ChatCompletionRequest) -> GenerationPlan:
    check_model(model, req.model)
    _check_unsupported(req)
    if req.tools and req.tool_choice not in (None, "none", "auto"):
        raise bad_request(
            "tool_choice other than 'none' or 'auto' is not supported yet", "tool_choice"
        )
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise bad_request("response_format is not supported yet", "response_format")
    started = time.perf_counter()
    prompt = render_chat_prompt(model, req)
    rendered = time.perf_counter()
    input_ids = model.tokenizer.encode(prompt, add_special_tokens=False)
    METRICS.stage.observe(rendered - started, ("template",))
    METRICS.stage.observe(time.perf_counter() - rendered, ("tokenize",))
    max_tokens = req.max_completion_tokens or req.max_tokens
    return GenerationPlan(
        request_id=new_request_id("chatcmpl"),
        input_ids=input_ids,
        sampling=_sampling(model, req, len(input_ids), max_tokens),
        stops=_stops(req),
        skip_special_tokens=req.skip_special_tokens,
        stream=req.stream,
    )


def prepare_completion(model: ServedModel, req: CompletionRequest) -> GenerationPlan:
    check_model(model, req.model)
    _check_unsupported(req)
    if req.echo or req.suffix or (req.best_of not in (None, 1)):
        raise bad_request("echo, suffix and best_of are not supported yet")
    started = time.perf_counter()
    input_ids = _completion_ids(model, req.prompt)
    METRICS.stage.observe(time.perf_counter() - started, ("tokenize",))
    return GenerationPlan(
        request_id=new_request_id("cmpl"),
        input_ids=input_ids,
        sampling=_sampling(model, req, len(input_ids), req.max_tokens),
        stops=_stops(req),
        skip_special_tokens=req.skip_special_tokens,
        stream=req.stream,
    )


def _completion_ids(model: ServedModel, prompt: Any) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt must not be empty", "prompt")
        return model.tokenizer.encode(prompt, add_special_tokens=True)
    if prompt and all(isinstance(t, int) for t in prompt):
        vocab = model.tokenizer.vocab_size
        if any(t < 0 or t >= vocab for t in prompt):
            raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
        return list(prompt)
    raise bad_request("batched prompts are not supported yet; send one prompt", "prompt")
