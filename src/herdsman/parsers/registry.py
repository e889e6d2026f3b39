"""Parser names (vLLM's, SMG's as aliases) and automatic selection from the model's identity."""

from __future__ import annotations

import re

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


def _table[T: type](classes: tuple[T, ...]) -> dict[str, T]:
    table: dict[str, T] = {}
    for cls in classes:
        table[_key(cls.name)] = cls  # type: ignore[attr-defined]
    for cls in classes:
        for alias in cls.aliases:  # type: ignore[attr-defined]
            # A primary name always wins over another parser's alias.
            table.setdefault(_key(alias), cls)
    return table


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")
