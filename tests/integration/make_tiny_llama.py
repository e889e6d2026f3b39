"""Writes a tiny random-weight Llama model beside a real fixture tokenizer, for the vLLM tier.

Run with the vLLM venv's python (it has torch and transformers), not herdsman's:

    python make_tiny_llama.py TOKENIZER_DIR OUT_DIR

Deterministic: fixed seed, fixed shapes. 2 layers, hidden 64, 2 heads of head_dim 32 (vLLM's CPU
attention needs head_dim >= 32), float32, the tokenizer's full vocabulary. The lm_head rows of
the special tokens (ids >= the first added token) are zero, so greedy decoding never picks EOS or
another special token: greedy outputs always run to max_tokens or a stop string.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 1234


def main(tokenizer_dir: Path, out: Path) -> None:
    tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    added = sorted(int(i) for i in tok_config.get("added_tokens_decoder", {}))
    vocab_size = max(len(tok_json["model"]["vocab"]) + len(added), (added[-1] + 1) if added else 0)
    src_config = json.loads((tokenizer_dir / "config.json").read_text())
    generation = json.loads((tokenizer_dir / "generation_config.json").read_text())
    vocab_size = max(vocab_size, src_config.get("vocab_size", 0))

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        initializer_range=0.5,
        tie_word_embeddings=False,
        bos_token_id=src_config.get("bos_token_id"),
        eos_token_id=src_config.get("eos_token_id"),
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        if added:
            model.lm_head.weight[added[0] :] = 0.0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
