"""Writes a tiny random-weight LLaVA-1.5-style model (LlavaForConditionalGeneration).

Run with the vLLM venv's python (it has torch and transformers), not herdsman's:

    python make_tiny_llava.py FIXTURE_DIR QWEN3_DIR PREPROCESSOR_CONFIG OUT_DIR

The vision side is LLaVA-1.5's geometry: a CLIP vision tower at 336x336 with 14x14 patches
(576 image features, the CLS token dropped: vision_feature_select_strategy "default", features of
the second-to-last layer), LLaVA-1.5's real CLIPImageProcessor config (PREPROCESSOR_CONFIG,
tests/multimodal/configs/llava_1_5) and LlavaProcessor values (patch_size 14,
num_additional_image_tokens 1). The tower is tiny: 3 layers, hidden 64 in 2 heads of 32.

The language side is not LLaVA-1.5's (a Llama 2 / Vicuna tokenizer is not among the fixtures): a
tiny Qwen2 with the real Qwen2.5-VL tokenizer and chat template (as make_tiny_qwen2_5_vl.py), the
image token being ``<|image_pad|>``, which that template places. vLLM serves LLaVA with any
text backbone its registry knows, and the image path (CLIP processor, 576 placeholders, the
projector) is LLaVA's. Special tokens' lm_head rows are zero (greedy never ends early).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from make_tiny_qwen2_5_vl import tokenizer_json
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

SEED = 4321
IMAGE_TOKEN = "<|image_pad|>"


def published_layout(path: Path) -> None:
    """Tensor names as llava-hf's checkpoints have them, which vLLM loads: transformers 5.19
    saves the CLIP tower's weights as ``vision_tower.embeddings...``, the published checkpoints
    (and vLLM's loader) have ``vision_tower.vision_model.embeddings...``."""
    tensors = load_file(path)
    prefix = "vision_tower."
    renamed = {
        (prefix + "vision_model." + k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in tensors.items()
    }
    save_file(renamed, path, metadata={"format": "pt"})


def main(fixture: Path, qwen3_dir: Path, preprocessor: Path, out: Path) -> None:
    real = json.loads((fixture / "config.json").read_text())
    generation = json.loads((fixture / "generation_config.json").read_text())
    tok_config = json.loads((fixture / "tokenizer_config.json").read_text())
    first_special = min(int(i) for i in tok_config["added_tokens_decoder"])
    pre = json.loads(preprocessor.read_text())
    side = pre["crop_size"]["height"]

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=side,
            patch_size=14,
            projection_dim=64,
            initializer_range=0.5,
        ),
        text_config=Qwen2Config(
            vocab_size=real["vocab_size"],
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rms_norm_eps=real["rms_norm_eps"],
            rope_theta=real["rope_theta"],
            initializer_range=0.5,
            bos_token_id=real["bos_token_id"],
            eos_token_id=real["eos_token_id"],
            tie_word_embeddings=False,
        ),
        image_token_index=real["image_token_id"],
        image_seq_length=(side // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    config.torch_dtype = "float32"
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight[first_special:] = 0.0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    published_layout(out / "model.safetensors")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(qwen3_dir), ensure_ascii=False))
    for name in ("tokenizer_config.json", "chat_template.json"):
        shutil.copyfile(fixture / name, out / name)
    shutil.copyfile(preprocessor, out / "preprocessor_config.json")
    processor = {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": 14,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    ids = {k: generation[k] for k in ("bos_token_id", "pad_token_id", "eos_token_id")}
    (out / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
