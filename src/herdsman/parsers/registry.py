"""Parser names (vLLM's, SMG's as aliases) and automatic selection from the model's identity."""

from __future__ import annotations

import re
from typing import TypeVar

from herdsman.parsers import (
    cohere,
    deepseek,
    generic,
    glm,
    harmony,
    kimi,
    llama,
    minimax,
    mistral,
    nemotron,
    qwen,
    seed,
    step,
)
from herdsman.parsers.reasoning import ReasoningParser
from herdsman.parsers.tool_calls import ToolCallParser

REASONING_PARSERS: tuple[type[ReasoningParser], ...] = (
    deepseek.DeepSeekR1ReasoningParser,
    deepseek.DeepSeekV3ReasoningParser,
    qwen.Qwen3ReasoningParser,
    qwen.Qwen3ThinkingReasoningParser,
    kimi.KimiReasoningParser,
    kimi.KimiK2ReasoningParser,
    glm.Glm45ReasoningParser,
    minimax.MiniMaxM2ReasoningParser,
    step.Step3ReasoningParser,
    cohere.CohereCmdReasoningParser,
    nemotron.NemotronReasoningParser,
    harmony.GptOssReasoningParser,
    mistral.MistralReasoningParser,
    seed.SeedOssReasoningParser,
)

TOOL_CALL_PARSERS: tuple[type[ToolCallParser], ...] = (
    generic.JsonToolCallParser,
    llama.Llama3JsonToolCallParser,
    qwen.HermesToolCallParser,
    qwen.Qwen3CoderToolCallParser,
    mistral.MistralToolCallParser,
    llama.PythonicToolCallParser,
    deepseek.DeepSeekV3ToolCallParser,
    deepseek.DeepSeekV31ToolCallParser,
    deepseek.DeepSeekV32ToolCallParser,
    kimi.KimiK2ToolCallParser,
    glm.Glm45ToolCallParser,
    glm.Glm47ToolCallParser,
    minimax.MiniMaxM2ToolCallParser,
    step.Step3ToolCallParser,
    cohere.CohereToolCallParser,
    harmony.OpenAIToolCallParser,
    generic.GraniteToolCallParser,
    generic.JambaToolCallParser,
    generic.Phi4MiniJsonToolCallParser,
    generic.InternLMToolCallParser,
    seed.SeedOssToolCallParser,
)


_C = TypeVar("_C", type[ReasoningParser], type[ToolCallParser])


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _table(classes: tuple[_C, ...]) -> dict[str, _C]:
    table: dict[str, _C] = {_key(cls.name): cls for cls in classes}
    for cls in classes:
        for alias in cls.aliases:
            # A primary name always wins over another parser's alias.
            table.setdefault(_key(alias), cls)
    return table


_REASONING = _table(REASONING_PARSERS)
_TOOLS = _table(TOOL_CALL_PARSERS)


class UnknownParserError(ValueError):
    pass


def _lookup(kind: str, table: dict[str, _C], name: str, primary: list[str]) -> _C:
    cls = table.get(_key(name))
    if cls is None:
        raise UnknownParserError(
            f"unknown {kind} parser {name!r}; choose one of: {', '.join(primary)} "
            f"(aliases: {', '.join(sorted(k for k in table if k not in primary))})"
        )
    return cls


def reasoning_parser_names() -> list[str]:
    return [cls.name for cls in REASONING_PARSERS]


def tool_call_parser_names() -> list[str]:
    return [cls.name for cls in TOOL_CALL_PARSERS]


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    return _lookup("reasoning", _REASONING, name, reasoning_parser_names())


def get_tool_call_parser(name: str) -> type[ToolCallParser]:
    return _lookup("tool-call", _TOOLS, name, tool_call_parser_names())


def _has(text: str, *needles: str) -> bool:
    return any(n in text for n in needles)


def auto_select(
    model_type: str, architectures: list[str], served_name: str, chat_template: str | None
) -> tuple[str | None, str | None]:
    """(reasoning parser, tool-call parser) for a model, or None where nothing fits.

    The chat template is the strongest evidence (it shows the markers the model was trained on);
    the model type, architectures and served name decide between variants that share markers.
    """
    template = chat_template or ""
    # Names and types are matched with separators folded, so "Qwen3-Coder" and "qwen3_coder" agree.
    ident = re.sub(r"[\s_./-]+", "-", " ".join([served_name, model_type, *architectures]).lower())
    thinking_name = _has(ident, "thinking", "-qwq", "qwq-")

    if _has(template, "<|channel|>") or _has(ident, "gpt-oss", "gptoss"):
        return "openai_gptoss", "openai"
    # Kimi-K2 is a DeepSeek-V3 architecture with its own markers: decide it first.
    if _has(template, "<|tool_calls_section_begin|>") or _has(ident, "kimi-k2", "kimik2"):
        return ("kimi_k2" if thinking_name else None), "kimi_k2"
    if _has(ident, "kimi") and thinking_name:
        return "kimi", None
    if _has(template, "｜DSML｜") or _has(ident, "deepseek-v3-2", "deepseek-v32"):
        return "deepseek_v3", "deepseek_v32"
    if _has(ident, "deepseek") or _has(template, "<｜tool▁calls▁begin｜>"):
        if _has(ident, "deepseek-v3-1", "deepseek-v31") or _has(template, "thinking is defined"):
            return "deepseek_v3", "deepseek_v31"
        if _has(ident, "deepseek-r1"):
            return "deepseek_r1", "deepseek_v3"
        return None, "deepseek_v3"
    if _has(ident, "gpt-oss"):
        return "openai_gptoss", "openai"
    if _has(template, "<arg_key>") or _has(ident, "glm4-moe", "glm-4-5", "glm-4-6", "glm-4-7"):
        tool = "glm47" if _has(ident, "glm-4-7", "glm47") else "glm45"
        return "glm45", tool
    if _has(template, "<minimax:tool_call>") or _has(ident, "minimax-m2"):
        return "minimax_m2", "minimax_m2"
    if _has(template, "steptml") or _has(ident, "step3"):
        return "step3", "step3"
    if _has(template, "<seed:think>", "<seed:tool_call>") or _has(ident, "seed-oss"):
        return "seed_oss", "seed_oss"
    if _has(template, "<|START_THINKING|>", "<|START_ACTION|>") or _has(ident, "cohere", "command"):
        reasoning = "cohere_cmd" if _has(template, "<|START_THINKING|>") else None
        return reasoning, "cohere"
    if _has(template, "[TOOL_CALLS]", "[THINK]") or _has(ident, "mistral", "mixtral", "magistral"):
        reasoning = "mistral" if _has(template, "[THINK]") or _has(ident, "magistral") else None
        return reasoning, "mistral"
    if _has(ident, "qwen") or _has(template, "<|im_start|>"):
        reasoning: str | None = None
        if thinking_name:
            reasoning = "qwen3_thinking"
        elif _has(ident, "qwen3") or _has(template, "</think>"):
            reasoning = "qwen3"
        if _has(template, "<function=") or _has(ident, "coder"):
            return reasoning, "qwen3_coder"
        if _has(template, "<tool_call>"):
            return reasoning, "hermes"
        return reasoning, None
    if _has(ident, "nemotron"):
        return "nemotron", ("llama3_json" if _has(template, "<|python_tag|>") else None)
    if _has(ident, "llama4", "llama-4"):
        return None, "pythonic"
    if _has(template, "<|python_tag|>", "<|python_start|>"):
        return None, ("pythonic" if _has(template, "<|python_start|>") else "llama3_json")
    if _has(template, "<|tool_call|>") and _has(ident, "granite"):
        return None, "granite"
    if _has(ident, "internlm"):
        return None, "internlm"
    if _has(template, "<tool_call>"):
        return ("qwen3" if _has(template, "</think>") else None), "hermes"
    if _has(template, "</think>"):
        return "qwen3", None
    return None, None
