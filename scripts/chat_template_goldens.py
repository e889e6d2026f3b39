"""Generate tests/templates/goldens.json with transformers' own chat-template rendering.

Run: python scripts/chat_template_goldens.py  (it re-runs itself in a venv with
transformers==4.57.6 under ~/.cache/herdsman-goldens/venv, creating it when missing).

For every template the tests use and every conversation in tests/templates/conversations.json,
the golden is what transformers renders (``render_jinja_template`` with the tokenizer's special
tokens, exactly what ``apply_chat_template(tokenize=False)`` does), or the error it raises.

Templates that print today's date (``strftime_now``, gpt-oss) see a frozen date, FROZEN_NOW, passed
as a template variable (it shadows transformers' global of the same name); the tests render with
the same clock, so the goldens hold on any day.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path.home() / ".cache" / "herdsman-goldens" / "venv"
PINS = ["transformers==4.57.6", "jinja2==3.1.6"]
SUITE = ROOT / "tests" / "templates" / "conversations.json"
OUT = ROOT / "tests" / "templates" / "goldens.json"
FIXTURES = ROOT / "tests" / "parsers" / "fixtures"
# The tests freeze herdsman's template clock at the same instant (tests/templates/test_goldens.py).
FROZEN_NOW = "2026-01-15T09:30:00"
# name -> (template source file, tokenizer_config.json with the special tokens)
TEMPLATES = {
    "qwen3": (FIXTURES / "qwen3/tokenizer_config.json", FIXTURES / "qwen3/tokenizer_config.json"),
    "qwen2_5": (
        FIXTURES / "qwen2_5/tokenizer_config.json",
        FIXTURES / "qwen2_5/tokenizer_config.json",
    ),
    "deepseek_v3": (
        FIXTURES / "deepseek_v3/tokenizer_config.json",
        FIXTURES / "deepseek_v3/tokenizer_config.json",
    ),
    "deepseek_v3_1": (
        FIXTURES / "deepseek_v3_1/chat_template.jinja",
        FIXTURES / "deepseek_v3/tokenizer_config.json",
    ),
    "gpt_oss": (FIXTURES / "gpt_oss/chat_template.jinja", None),
    "glm4_5": (FIXTURES / "glm4_5/chat_template.jinja", None),
    "kimi_k2": (FIXTURES / "kimi_k2/chat_template.jinja", None),
    "llama3": (
        ROOT / "models/llama3/tokenizer_config.json",
        ROOT / "models/llama3/tokenizer_config.json",
    ),
    "qwen2_5_vl": (
        ROOT / "models/qwen2_5_vl/chat_template.json",
        ROOT / "models/qwen2_5_vl/tokenizer_config.json",
    ),
}
SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def template_source(path: Path) -> str:
    if path.suffix == ".jinja":
        return path.read_text(encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))["chat_template"]


def special_tokens(config_path: Path | None) -> dict:
    if config_path is None:
        return {}
    config = json.loads(config_path.read_text(encoding="utf-8"))
    out = {}
    for key in SPECIAL_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list) and extra:
        out["additional_special_tokens"] = [
            t.get("content") if isinstance(t, dict) else t for t in extra
        ]
    return out


def generate() -> None:
    from datetime import datetime

    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template

    suite = json.loads(SUITE.read_text(encoding="utf-8"))
    frozen = datetime.fromisoformat(FROZEN_NOW)

    def strftime_now(fmt: str) -> str:
        return frozen.strftime(fmt)

    goldens: dict = {
        "transformers": transformers.__version__,
        "frozen_now": FROZEN_NOW,
        "cases": {},
    }
    for name, (source_path, config_path) in TEMPLATES.items():
        source = template_source(source_path)
        specials = special_tokens(config_path)
        for case, spec in suite.items():
            try:
                rendered, _ = render_jinja_template(
                    conversations=[spec["messages"]],
                    tools=spec.get("tools"),
                    chat_template=source,
                    add_generation_prompt=spec.get("add_generation_prompt", True),
                    continue_final_message=spec.get("continue_final_message", False),
                    **specials,
                    **spec.get("kwargs", {}),
                    strftime_now=strftime_now,
                )
                result = {"text": rendered[0]}
            except Exception as exc:  # the golden is then "transformers refuses this"
                result = {"error": f"{type(exc).__name__}: {exc}"}
            goldens["cases"][f"{name}/{case}"] = result
    OUT.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(goldens['cases'])} goldens to {OUT}")


def main() -> None:
    if os.environ.get("HERDSMAN_GOLDENS_INNER") == "1":
        generate()
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    env = dict(os.environ, HERDSMAN_GOLDENS_INNER="1")
    subprocess.run([str(python), __file__], check=True, env=env)


if __name__ == "__main__":
    main()
