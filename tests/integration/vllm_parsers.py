"""vLLM's own reasoning and tool-call parsers over given model outputs (the reference side).

Run with the vLLM venv's python: ``python vllm_parsers.py`` reads a JSON object on stdin,
``{"cases": [case, ...]}``, each case::

    {"id": str, "kind": "reasoning" | "tool" | "pipeline",
     "reasoning_parser": str | null, "tool_parser": str | null,   # vLLM parser names
     "tokenizer": DIR, "text": str, "token_ids": [int, ...] | null,
     "prompt": str,                        # the rendered prompt's tail (its token ids matter)
     "chunkings": [[boundary, ...], ...],  # token indices where a streamed delta ends
     "tools": [OpenAI tool, ...] | null, "chat_template_kwargs": {...} | null}

(plus ``"classes": [[kind, name], ...]``, names whose vLLM class to report) and prints
``{"results": [result, ...], "registered": {...}, "classes": {"kind:name": class}}``, each result
``{"id", "token_ids", "whole": parsed, "streams": [parsed + {"deltas": [str, ...]}, ...],
"error": str | null}`` where ``parsed`` is
``{"reasoning", "content", "tool_calls": [{"name", "arguments"}]}`` (arguments decoded from JSON
when they are JSON, else the raw string), or ``{"error": traceback}`` when vLLM raised.

The parsers run the way vLLM's chat-completions server runs them: ``ParserManager.get_parser``
composes the named parsers into the per-request ``Parser``; the whole output goes through
``Parser.parse`` (``extract_reasoning`` then ``extract_tool_calls``), a stream through
``Parser.parse_delta`` once per delta (which calls ``extract_reasoning_streaming`` /
``extract_tool_calls_streaming`` with previous/current/delta text and token ids, flushes the
engine-based parsers and appends unstreamed tool arguments on the last delta). The stream is
folded as an OpenAI client does: content and reasoning concatenated, each tool call's name and
argument deltas concatenated per index. The text of each delta is what vLLM's detokenizer gives
for those tokens: the decoded prefix up to the delta's last token minus the decoded prefix before
it (special tokens kept; boundaries are chosen where the prefix decodes to whole characters).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import itertools

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser.parser_manager import ParserManager
from vllm.tokenizers import get_tokenizer

_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: str) -> Any:
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = get_tokenizer(path)
    return _TOKENIZERS[path]


def _arguments(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _parsed(reasoning: str | None, content: str | None, calls: list[tuple[str, str]]) -> dict:
    return {
        "reasoning": reasoning or None,
        "content": content or None,
        "tool_calls": [{"name": n, "arguments": _arguments(a)} for n, a in calls],
    }


def _request(case: dict) -> ChatCompletionRequest:
    tools = case.get("tools") or None
    return ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        tools=tools,
        tool_choice="auto" if tools else None,
        chat_template_kwargs=case.get("chat_template_kwargs"),
        include_reasoning=True,
    )


def _parser_cls(case: dict) -> Any:
    names = (case.get("reasoning_parser"), case.get("tool_parser"))
    return ParserManager.get_parser(
        tool_parser_name=names[1],
        reasoning_parser_name=names[0],
        enable_auto_tools=names[1] is not None,
        is_harmony=any(n in ("openai", "openai_gptoss") for n in names),
    )


def _new_parser(case: dict, tokenizer: Any, request: ChatCompletionRequest) -> Any:
    return _parser_cls(case)(
        tokenizer,
        request.tools,
        chat_template_kwargs=case.get("chat_template_kwargs"),
        model_config=None,
    )


def _whole(case: dict, tokenizer: Any, ids: list[int], prompt_ids: list[int]) -> dict:
    request = _request(case)
    parser = _new_parser(case, tokenizer, request)
    request = parser.adjust_request(request)
    parser.set_prompt_token_ids(prompt_ids)
    reasoning, content, calls = parser.parse(
        case["text"], request, enable_auto_tools=True, model_output_token_ids=ids
    )
    return _parsed(reasoning, content, [(c.name, c.arguments) for c in calls or []])


def _deltas(tokenizer: Any, ids: list[int], bounds: list[int]) -> list[tuple[str, list[int]]]:
    # Boundaries fall where the decoded prefix is whole characters, so each delta decodes on its
    # own to what the incremental detokenizer emits (checked against the whole text below).
    cuts = [0, *(b for b in bounds if 0 < b < len(ids)), len(ids)]
    return [
        (tokenizer.decode(ids[a:b], skip_special_tokens=False), ids[a:b])
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]


def _stream(
    case: dict, tokenizer: Any, ids: list[int], prompt_ids: list[int], bounds: list[int]
) -> dict:
    request = _request(case)
    parser = _new_parser(case, tokenizer, request)
    request = parser.adjust_request(request)
    deltas = _deltas(tokenizer, ids, bounds)
    if "".join(text for text, _ in deltas) != case["text"]:
        raise ValueError(f"deltas {[text for text, _ in deltas]!r} do not add up to the text")
    reasoning: list[str] = []
    content: list[str] = []
    calls: dict[int, list[str]] = {}
    for i, (text, delta_ids) in enumerate(deltas):
        message = parser.parse_delta(
            text,
            list(delta_ids),
            request,
            prompt_token_ids=prompt_ids,
            finished=i == len(deltas) - 1,
        )
        if message is None:
            continue
        reasoning.append(message.reasoning or "")
        content.append(message.content or "")
        for call in message.tool_calls or []:
            slot = calls.setdefault(call.index, ["", ""])
            if call.function is not None:
                slot[0] += call.function.name or ""
                slot[1] += call.function.arguments or ""
    result = _parsed("".join(reasoning), "".join(content), [tuple(calls[i]) for i in sorted(calls)])
    result["deltas"] = [text for text, _ in deltas]
    return result


def run_case(case: dict) -> dict:
    result: dict[str, Any] = {"id": case["id"], "error": None}
    started = time.monotonic()
    try:
        tokenizer = _tokenizer(case["tokenizer"])
        ids = case.get("token_ids")
        if ids is None:
            ids = tokenizer.encode(case["text"], add_special_tokens=False)
        result["token_ids"] = ids
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if decoded != case["text"]:
            raise ValueError(f"token ids decode to {decoded!r}, not the case's text")
        prompt_ids = tokenizer.encode(case.get("prompt") or "", add_special_tokens=False)
    except Exception:
        result["error"] = traceback.format_exc()[-3000:]
        return result
    result["whole"] = _guarded(_whole, case, tokenizer, ids, prompt_ids)
    result["streams"] = [
        _guarded(_stream, case, tokenizer, ids, prompt_ids, bounds) for bounds in case["chunkings"]
    ]
    result["seconds"] = time.monotonic() - started
    return result


def _guarded(fn: Any, *args: Any) -> dict:
    """A parser crash is a result to compare (``{"error": traceback}``), not the batch's end."""
    try:
        return fn(*args)
    except Exception:
        return {"error": traceback.format_exc()[-3000:]}


def main() -> None:
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    request = json.load(sys.stdin)
    started = time.monotonic()
    results = [run_case(case) for case in request["cases"]]
    print(
        f"vllm_parsers: {len(results)} cases in {time.monotonic() - started:.1f}s", file=sys.stderr
    )
    registered = {
        "reasoning": ReasoningParserManager.list_registered(),
        "tool": ToolParserManager.list_registered(),
    }
    classes = {}
    for kind, name in request.get("classes", []):  # which class a name resolves to
        get = (
            ToolParserManager.get_tool_parser
            if kind == "tool"
            else ReasoningParserManager.get_reasoning_parser
        )
        cls = get(name)
        classes[f"{kind}:{name}"] = f"{cls.__module__}.{cls.__qualname__}"
    json.dump(
        {"results": results, "registered": registered, "classes": classes},
        sys.stdout,
        ensure_ascii=False,
    )


if __name__ == "__main__":
    main()
