"""Parser names and aliases, and automatic selection from the model's identity and template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from herdsman.parsers import registry
from herdsman.parsers.reasoning import ReasoningParser
from herdsman.parsers.tool_calls import ToolCallParser

FIXTURES = Path(__file__).parent / "fixtures"


def _template(name: str) -> str:
    folder = FIXTURES / name
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    return json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]


def test_enough_parsers() -> None:
    assert len(registry.reasoning_parser_names()) >= 12
    assert len(registry.tool_call_parser_names()) >= 18


# The names the issue asks for (vLLM's) and SMG's names for the same formats.
VLLM_REASONING = ["deepseek_r1", "qwen3", "glm45", "kimi_k2", "openai_gptoss", "deepseek_v3"]
SMG_REASONING = [
    "deepseek_r1",
    "qwen3",
    "qwen3_thinking",
    "kimi",
    "glm45",
    "step3",
    "minimax",
    "cohere_cmd",
    "nano_v3",
    "deepseek_v31",
    "kimi_thinking",
]
VLLM_TOOLS = [
    "hermes",
    "llama3_json",
    "mistral",
    "pythonic",
    "qwen3_coder",
    "deepseek_v3",
    "deepseek_v31",
    "kimi_k2",
    "glm45",
    "openai",
]
SMG_TOOLS = [
    "json",
    "mistral",
    "qwen",
    "qwen_coder",
    "pythonic",
    "llama",
    "deepseek",
    "deepseek31",
    "glm45_moe",
    "glm47_moe",
    "step3",
    "kimik2",
    "minimax_m2",
    "cohere",
]


@pytest.mark.parametrize("name", sorted(set(VLLM_REASONING + SMG_REASONING)))
def test_reasoning_names_resolve(name: str) -> None:
    cls = registry.get_reasoning_parser(name)
    assert issubclass(cls, ReasoningParser)
    assert name in (cls.name, *cls.aliases)


@pytest.mark.parametrize("name", sorted(set(VLLM_TOOLS + SMG_TOOLS)))
def test_tool_names_resolve(name: str) -> None:
    cls = registry.get_tool_call_parser(name)
    assert issubclass(cls, ToolCallParser)
    assert name in (cls.name, *cls.aliases)


def test_primary_names_are_unique_and_win_over_aliases() -> None:
    for names, get in (
        (registry.reasoning_parser_names(), registry.get_reasoning_parser),
        (registry.tool_call_parser_names(), registry.get_tool_call_parser),
    ):
        assert len(names) == len(set(names))
        for name in names:
            assert get(name).name == name
    assert registry.get_tool_call_parser("QWEN3-CODER").name == "qwen3_coder"


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown tool-call parser 'nope'.*hermes.*qwen3_coder"):
        registry.get_tool_call_parser("nope")
    with pytest.raises(ValueError, match=r"unknown reasoning parser 'nope'.*deepseek_r1"):
        registry.get_reasoning_parser("nope")


@pytest.mark.parametrize(
    ("model_type", "architectures", "served", "fixture", "expected"),
    [
        ("qwen3", ["Qwen3ForCausalLM"], "Qwen/Qwen3-8B", "qwen3", ("qwen3", "hermes")),
        ("qwen2", ["Qwen2ForCausalLM"], "Qwen2.5-7B-Instruct", "qwen2_5", (None, "hermes")),
        (
            "deepseek_v3",
            ["DeepseekV3ForCausalLM"],
            "deepseek-ai/DeepSeek-V3",
            "deepseek_v3",
            (None, "deepseek_v3"),
        ),
        (
            "deepseek_v3",
            ["DeepseekV3ForCausalLM"],
            "deepseek-ai/DeepSeek-R1-0528",
            "deepseek_v3",
            ("deepseek_r1", "deepseek_v3"),
        ),
        (
            "deepseek_v3",
            ["DeepseekV3ForCausalLM"],
            "dsv31",
            "deepseek_v3_1",
            ("deepseek_v3", "deepseek_v31"),
        ),
        ("glm4_moe", ["Glm4MoeForCausalLM"], "zai-org/GLM-4.5-Air", "glm4_5", ("glm45", "glm45")),
        (
            "kimi_k2",
            ["DeepseekV3ForCausalLM"],
            "moonshotai/Kimi-K2-Instruct",
            "kimi_k2",
            (None, "kimi_k2"),
        ),
        (
            "gpt_oss",
            ["GptOssForCausalLM"],
            "openai/gpt-oss-20b",
            "gpt_oss",
            ("openai_gptoss", "openai"),
        ),
    ],
)
def test_auto_select_with_real_templates(
    model_type: str,
    architectures: list[str],
    served: str,
    fixture: str,
    expected: tuple[str | None, str | None],
) -> None:
    assert registry.auto_select(model_type, architectures, served, _template(fixture)) == expected


@pytest.mark.parametrize(
    ("model_type", "served", "expected"),
    [
        ("qwen3_moe", "Qwen/Qwen3-Coder-30B-A3B-Instruct", ("qwen3", "qwen3_coder")),
        ("qwen3_moe", "Qwen/Qwen3-235B-A22B-Thinking-2507", ("qwen3_thinking", None)),
        ("glm4_moe", "zai-org/GLM-4.7", ("glm45", "glm47")),
        ("kimi_k2", "moonshotai/Kimi-K2-Thinking", ("kimi_k2", "kimi_k2")),
        ("minimax_m2", "MiniMaxAI/MiniMax-M2", ("minimax_m2", "minimax_m2")),
        ("step3", "stepfun-ai/step3", ("step3", "step3")),
        ("cohere2", "CohereLabs/command-a-reasoning-08-2025", (None, "cohere")),
        ("mistral", "mistralai/Mistral-Small-3.2-24B-Instruct-2506", (None, "mistral")),
        ("mistral", "mistralai/Magistral-Small-2509", ("mistral", "mistral")),
        ("llama4", "meta-llama/Llama-4-Scout-17B-16E-Instruct", (None, "pythonic")),
        ("nemotron_h", "nvidia/NVIDIA-Nemotron-Nano-9B-v2", ("nemotron", None)),
        ("seed_oss", "ByteDance-Seed/Seed-OSS-36B-Instruct", ("seed_oss", "seed_oss")),
        ("llama", "meta-llama/Meta-Llama-3-8B-Instruct", (None, None)),
        ("gpt2", "gpt2", (None, None)),
    ],
)
def test_auto_select_by_name(
    model_type: str, served: str, expected: tuple[str | None, str | None]
) -> None:
    assert registry.auto_select(model_type, [], served, None) == expected


def test_auto_select_prefers_template_markers() -> None:
    llama_tools = "{{ '<|python_tag|>' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert registry.auto_select("llama", [], "my-finetune", llama_tools) == (None, "llama3_json")
    cohere = "<|START_THINKING|> <|START_ACTION|>"
    assert registry.auto_select("cohere2", [], "served", cohere) == ("cohere_cmd", "cohere")
