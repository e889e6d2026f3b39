"""Chat prompts as vLLM 0.32's OpenAI server renders them (the template differential's reference).

Run with the vLLM venv's python: ``python vllm_render.py`` reads a JSON object on stdin,
``{"cases": [case, ...]}``, each case::

    {"id": str, "model": DIR, "request": {chat completion request body, without "model"}}

and prints ``{"results": [result, ...]}``, each ``{"id", "prompt": str | null,
"prompt_token_ids": [int, ...] | null, "content_format": "string" | "openai" | null,
"error": str | null}``.

Nothing here re-implements vLLM: each request goes through the objects ``vllm serve`` builds and
the call its chat-completions handler makes (``OpenAIServingChat.render_chat_request`` ->
``OnlineRenderer.render_chat``). The body is validated by ``ChatCompletionRequest`` (its
before-validators rename ``reasoning_content`` to ``reasoning``); ``render_chat`` then either
renders the Jinja template (``preprocess_chat``: ``build_chat_params`` / ``build_tok_params``,
``HfRenderer.render_messages`` -> ``parse_chat_messages`` with the content format
``resolve_chat_template_content_format`` detects, ``safe_apply_chat_template``, then the
renderer's tokenization with the request's ``add_special_tokens``), or, for a ``gpt_oss``
``model_type``, builds Harmony messages and encodes them (``_make_request_with_harmony``), as the
server does for gpt-oss. An ``ErrorResponse`` or an exception on the way is the case's ``error``.

The objects are the real ones: ``ModelConfig(model=DIR)`` (DIR holds the tokenizer files and a
small ``config.json`` the test writes), ``VllmConfig``, ``renderer_from_config`` (the renderer
class and tokenizer the server picks), and ``OnlineRenderer`` with the server's defaults
(``--chat-template-content-format auto``, no request templates) plus
``--enable-auto-tool-choice`` so that requests carrying ``tools`` are rendered instead of refused
(no tool parser: parsing the output is not under test, and a parser's ``adjust_request`` runs
after rendering). No model weights are loaded. One stand-in: ``HfRenderer`` wraps the tokenizer in
a thread pool of deep copies (``maybe_make_thread_pool``, for concurrent requests); that took
~12 s per model here and changes no output, so it is replaced by a no-op. For the Harmony path,
``TIKTOKEN_ENCODINGS_BASE`` must name a directory holding ``o200k_base.tiktoken`` (the test
writes it from the gpt-oss tokenizer.json; openai-harmony checks its sha256).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

from pydantic import ValidationError
from vllm.config import ModelConfig, VllmConfig
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.renderers import hf as _hf_renderer
from vllm.renderers.hf import resolve_chat_template_content_format
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.renderers.registry import renderer_from_config

# Deep copies of the same tokenizer for thread safety: same outputs, seconds per model.
_hf_renderer.maybe_make_thread_pool = lambda tokenizer, copies=1: tokenizer

_SERVERS: dict[str, OnlineRenderer] = {}


def _server(model_dir: str) -> OnlineRenderer:
    if model_dir not in _SERVERS:
        started = time.monotonic()
        model_config = ModelConfig(model=model_dir, tokenizer=model_dir, max_model_len=32768)
        renderer = renderer_from_config(VllmConfig(model_config=model_config))
        _SERVERS[model_dir] = OnlineRenderer(
            model_config,
            renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=True,
        )
        print(f"{model_dir}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return _SERVERS[model_dir]


def _content_format(server: OnlineRenderer, request: ChatCompletionRequest) -> str | None:
    if server.use_harmony:
        return None
    tools = [t.model_dump() for t in request.tools] if request.tools else None
    return resolve_chat_template_content_format(
        None,
        tools,
        "auto",
        server.renderer.get_tokenizer(),
        model_config=server.model_config,
    )


async def _render(case: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": case["id"],
        "prompt": None,
        "prompt_token_ids": None,
        "content_format": None,
        "error": None,
    }
    server = _server(case["model"])
    try:
        request = ChatCompletionRequest.model_validate({"model": "m", **case["request"]})
    except ValidationError as exc:
        out["error"] = f"validation: {exc.errors(include_url=False)[0]}"[:2000]
        return out
    except Exception as exc:
        out["error"] = f"validation: {type(exc).__name__}: {exc}"
        return out
    try:
        out["content_format"] = _content_format(server, request)
        result = await server.render_chat(request)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    if isinstance(result, ErrorResponse):
        out["error"] = f"ErrorResponse: {result.error.message}"
        return out
    _conversation, (engine_input,) = result
    ids = list(engine_input["prompt_token_ids"])
    out["prompt_token_ids"] = ids
    text = engine_input.get("prompt")
    if text is None:  # Harmony renders ids only
        text = server.renderer.get_tokenizer().decode(ids, skip_special_tokens=False)
    out["prompt"] = text
    return out


async def _main() -> None:
    cases = json.load(sys.stdin)["cases"]
    results = []
    for case in cases:
        try:
            results.append(await _render(case))
        except Exception:
            results.append({"id": case["id"], "error": "crash: " + traceback.format_exc()})
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(_main())
