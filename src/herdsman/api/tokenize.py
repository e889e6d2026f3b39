"""POST /v1/tokenize and POST /v1/detokenize, in the shapes vLLM's server uses."""

from __future__ import annotations

from typing import Any

import msgspec

from herdsman.api.bodies import decode_body, json_response
from herdsman.api.errors import bad_request
from herdsman.http import Request, Response
from herdsman.pipeline.context import ServingContext
from herdsman.pipeline.prepare import render_chat_prompt
from herdsman.protocol.openai import ChatCompletionRequest


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


async def tokenize(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, TokenizeRequest)
    model = ctx.served(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("send either 'prompt' or 'messages'")
    if body.messages is not None:
        chat = ChatCompletionRequest(
            model=model.name,
            messages=body.messages,
            tools=body.tools,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
        )
        text = render_chat_prompt(model, chat)
        # The rendered template already holds its special tokens (vLLM's default for chat).
        add_special = bool(body.add_special_tokens)
    else:
        assert body.prompt is not None
        text = body.prompt
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
    tokens = await model.tokenizer.encode_async(text, add_special_tokens=add_special)
    # The vocabulary's pieces ("Ġhello"), as vLLM's convert_ids_to_tokens gives them.
    strs = [model.tokenizer.token_piece(t) for t in tokens] if body.return_token_strs else None
    return json_response(
        {
            "count": len(tokens),
            "max_model_len": model.max_context_length,
            "tokens": tokens,
            "token_strs": strs,
        }
    )


async def detokenize(ctx: ServingContext, request: Request) -> Response:
    body = decode_body(request.body, DetokenizeRequest)
    model = ctx.served(body.model)
    vocab = model.tokenizer.vocab_size
    if any(t < 0 or t >= vocab for t in body.tokens):
        raise bad_request(f"token ids must be in [0, {vocab})", "tokens")
    return json_response({"prompt": model.tokenizer.decode(body.tokens, skip_special_tokens=False)})
