"""Chat templates render exactly as transformers does (scripts/chat_template_goldens.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from herdsman.tokenizer import ChatTemplate, ChatTemplateError
from herdsman.tokenizer.loader import special_tokens_from_config

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
FIXTURES = ROOT / "tests" / "parsers" / "fixtures"
SUITE = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
GOLDEN_FILE = json.loads((HERE / "goldens.json").read_text(encoding="utf-8"))
GOLDENS = GOLDEN_FILE["cases"]
# The instant the golden script froze transformers' strftime_now at: no golden depends on today.
FROZEN_NOW = datetime.fromisoformat(GOLDEN_FILE["frozen_now"])
TEMPLATES = {
    "qwen3": ("qwen3/tokenizer_config.json", "qwen3/tokenizer_config.json"),
    "qwen2_5": ("qwen2_5/tokenizer_config.json", "qwen2_5/tokenizer_config.json"),
    "deepseek_v3": ("deepseek_v3/tokenizer_config.json", "deepseek_v3/tokenizer_config.json"),
    "deepseek_v3_1": ("deepseek_v3_1/chat_template.jinja", "deepseek_v3/tokenizer_config.json"),
    "gpt_oss": ("gpt_oss/chat_template.jinja", None),
    "glm4_5": ("glm4_5/chat_template.jinja", None),
    "kimi_k2": ("kimi_k2/chat_template.jinja", None),
    "llama3": (
        "../../../models/llama3/tokenizer_config.json",
        "../../../models/llama3/tokenizer_config.json",
    ),
    "qwen2_5_vl": (
        "../../../models/qwen2_5_vl/chat_template.json",
        "../../../models/qwen2_5_vl/tokenizer_config.json",
    ),
}


def _template(name: str) -> ChatTemplate:
    source_file, config_file = TEMPLATES[name]
    path = FIXTURES / source_file
    source = (
        path.read_text(encoding="utf-8")
        if path.suffix == ".jinja"
        else json.loads(path.read_text(encoding="utf-8"))["chat_template"]
    )
    config = json.loads((FIXTURES / config_file).read_text()) if config_file else {}
    return ChatTemplate(source, special_tokens_from_config(config), now=lambda: FROZEN_NOW)


COMPILED = {name: _template(name) for name in TEMPLATES}


def test_every_template_and_case_has_a_golden() -> None:
    assert len(GOLDENS) == len(TEMPLATES) * len(SUITE)
    assert sum("text" in g for g in GOLDENS.values()) >= 100


def test_dated_templates_print_the_clock_they_are_given() -> None:
    """gpt-oss prints today's date: the template clock is what decides it, not the machine's."""
    spec = SUITE["basic"]
    other_day = datetime(2031, 7, 4)
    template = _template("gpt_oss")
    dated = ChatTemplate(template.source, {}, now=lambda: other_day)
    assert "Current date: 2031-07-04" in dated.render(spec["messages"])
    assert f"Current date: {FROZEN_NOW:%Y-%m-%d}" in template.render(spec["messages"])


@pytest.mark.parametrize("key", sorted(GOLDENS))
def test_render_equals_transformers(key: str) -> None:
    name, case = key.split("/")
    spec = SUITE[case]
    golden = GOLDENS[key]

    def render() -> str:
        return COMPILED[name].render(
            spec["messages"],
            tools=spec.get("tools"),
            add_generation_prompt=spec.get("add_generation_prompt", True),
            continue_final_message=spec.get("continue_final_message", False),
            extra=spec.get("kwargs"),
        )

    if "error" in golden:
        with pytest.raises(ChatTemplateError):
            render()
    else:
        assert render() == golden["text"]
