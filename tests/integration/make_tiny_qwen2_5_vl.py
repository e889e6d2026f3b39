"""Writes a tiny random-weight Qwen2.5-VL model with the real tokenizer and processor files.

Run with the vLLM venv's python (it has torch and transformers), not herdsman's:

    python make_tiny_qwen2_5_vl.py FIXTURE_DIR QWEN3_DIR PREPROCESSOR_CONFIG OUT_DIR

FIXTURE_DIR is tests/fixtures/qwen2_5_vl (Qwen2.5-VL-7B-Instruct's tokenizer_config.json,
chat_template.json, config.json, generation_config.json), QWEN3_DIR is models/qwen3 (its
tokenizer.json: the same byte-level BPE, see tests/fixtures/qwen2_5_vl/PROVENANCE.md), and
PREPROCESSOR_CONFIG the real preprocessor_config.json (tests/multimodal/configs/qwen2_5_vl).

Deterministic: fixed seed, fixed shapes, float32. The vision tower keeps the real geometry
(patch 14, spatial merge 2, temporal patch 2, window 112, so a real image's patches, windows and
placeholder count are what the 7B model's would be) but is 2 blocks deep (the first windowed,
the second full attention), hidden 64 in 2 heads of 32 (vLLM's CPU attention needs head_dim
>= 32). The language model: 2 layers, hidden 64, 2 heads of 32, M-RoPE sections (4, 6, 6) (sum
16 = head_dim / 2, the real model's proportions), the real vocabulary size and special token
ids. The lm_head rows of the special tokens (ids >= 151643) are zero, so greedy decoding never
picks EOS or another special token: greedy outputs always run to max_tokens.

The generation_config.json written carries only the token ids: the real one's sampling defaults
(repetition_penalty 1.05, temperature 1e-6) are applied by vLLM's OpenAI server and not by
herdsman, a difference in defaults, not in images, that the image comparison keeps out.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

SEED = 1234
# Ids Qwen3's tokenizer.json adds after Qwen2.5-VL's last added token (151664).
QWEN3_ONLY = range(151665, 151669)


def tokenizer_json(qwen3_dir: Path) -> dict:
    """Qwen2.5-VL's tokenizer.json: Qwen3's without the four added tokens Qwen3 introduced."""
    data = json.loads((qwen3_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] not in QWEN3_ONLY]
    return data


def main(fixture: Path, qwen3_dir: Path, preprocessor: Path, out: Path) -> None:
    real = json.loads((fixture / "config.json").read_text())
    real_vision = real["vision_config"]
    generation = json.loads((fixture / "generation_config.json").read_text())
    tok_config = json.loads((fixture / "tokenizer_config.json").read_text())
    first_special = min(int(i) for i in tok_config["added_tokens_decoder"])

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": real["vocab_size"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": real["rms_norm_eps"],
            "initializer_range": 0.5,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [4, 6, 6],
                "rope_theta": real["rope_theta"],
            },
            "bos_token_id": real["bos_token_id"],
            "eos_token_id": real["eos_token_id"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "hidden_act": real_vision["hidden_act"],
            "in_channels": 3,
            "patch_size": real_vision["patch_size"],
            "spatial_merge_size": real_vision["spatial_merge_size"],
            "temporal_patch_size": real_vision["temporal_patch_size"],
            "tokens_per_second": real_vision["tokens_per_second"],
            "window_size": real_vision["window_size"],
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
            "initializer_range": 0.5,
        },
        image_token_id=real["image_token_id"],
        video_token_id=real["video_token_id"],
        vision_start_token_id=real["vision_start_token_id"],
        vision_end_token_id=real["vision_end_token_id"],
        tie_word_embeddings=False,
    )
    config.torch_dtype = "float32"
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight[first_special:] = 0.0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(qwen3_dir), ensure_ascii=False))
    for name in ("tokenizer_config.json", "chat_template.json"):
        shutil.copyfile(fixture / name, out / name)
    shutil.copyfile(preprocessor, out / "preprocessor_config.json")
    ids = {k: generation[k] for k in ("bos_token_id", "pad_token_id", "eos_token_id")}
    (out / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
