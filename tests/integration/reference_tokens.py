"""Prompt token ids as transformers makes them (what vLLM's own OpenAI server would send).

Run with the vLLM venv's python: ``python reference_tokens.py MODEL_DIR`` reads a JSON object
``{"chats": [[messages...], ...], "texts": [str, ...]}`` on stdin and prints
``{"chats": [[ids...], ...], "texts": [[ids...], ...]}``: each chat through
``apply_chat_template(add_generation_prompt=True)``, each text through ``encode`` (with BOS).
"""

from __future__ import annotations

import json
import sys

from transformers import AutoTokenizer


def main(model_dir: str) -> None:
    request = json.load(sys.stdin)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chats = []
    for messages in request.get("chats", []):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template writes BOS itself, so no second one here.
        chats.append(tokenizer.encode(text, add_special_tokens=False))
    texts = [tokenizer.encode(text) for text in request.get("texts", [])]
    json.dump({"chats": chats, "texts": texts}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
