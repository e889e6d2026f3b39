#!/usr/bin/env python3
"""Regenerate the multimodal test images and the golden tensors from transformers.

    python scripts/multimodal_goldens.py [--chat-prompts]

Creates (once) a venv under ~/.cache/herdsman-goldens/ with transformers==4.57.6 and the same
Pillow and numpy as the project (resampling must be the same code for outputs to be equal), then
re-runs itself inside it to:

1. derive the test images in tests/multimodal/images/ from the source copies in
   tests/multimodal/images/source/ (see PROVENANCE.md there);
2. run transformers' own (slow, torch-free) image processors with the configs in
   tests/multimodal/configs/ over them, and store the outputs in tests/multimodal/goldens/.

Then, because Llama 4's image processor exists only as a torchvision processor, it creates a
second venv (~/.cache/herdsman-goldens/venv-torch: the same pins plus torch 2.13.0 CPU and
torchvision 0.28.0) and re-runs itself there with --llama4 to add the Llama 4 goldens
(tests/multimodal/goldens/llama4/ and llama4_decisions.json).

Goldens are stored losslessly but compactly: every processor output is a per-channel function of
uint8 pixels, so a tensor has at most a few hundred distinct float32 values; we store those values
and a uint16 index array (np.unique), which deflates far better than raw float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "multimodal"
IMAGES = TESTS / "images"
SOURCE = IMAGES / "source"
CONFIGS = TESTS / "configs"
GOLDENS = TESTS / "goldens"
VENV = Path.home() / ".cache" / "herdsman-goldens" / "venv"
PINS = ["transformers==4.57.6", "pillow==13.0.0", "numpy==2.4.6"]
# Llama 4 only: another venv, so that the other goldens keep coming from torch-free transformers.
VENV_TORCH = Path.home() / ".cache" / "herdsman-goldens" / "venv-torch"
TORCH_PINS = ["torch==2.13.0", "torchvision==0.28.0", *PINS]

# name -> (source, how to derive, file format); "large" images get shape/decision goldens only.
# No 1x1 (or any image whose height or width is 1 or 3 with a dimension <= 3): transformers infers
# the channel axis from the array shape and takes a (1, 1, 3) image for channels-first; our 1x1
# behaviour is tested on its own.
TENSOR_IMAGES = [
    "square.png",
    "tall.png",
    "wide.png",
    "tiny_5x4.png",
    "tiny_3x2.png",
    "odd_333x217.jpg",
    "gray.png",
    "rgba.png",
    "palette.png",
    "anim.gif",
    "exif_rot6.jpg",
    "webp.webp",
]
SHAPE_IMAGES = ["large_4000x3000.jpg", "very_tall_60x1400.png", "very_wide_1400x60.png"]


def ensure_venv(where: Path = VENV, pins: list[str] = PINS) -> Path:
    py = where / "bin" / "python"
    if not py.exists():
        venv.create(where, with_pip=True)
    # importlib.metadata, not `import torchvision`: see import_torchvision below.
    names = [p.split("==")[0] for p in pins]
    check = (
        "import importlib.metadata as m;"
        f"print(' '.join(m.version(n).split('+')[0] for n in {names!r}))"
    )
    want = " ".join(p.split("==")[1] for p in pins)
    got = subprocess.run([py, "-c", check], capture_output=True, text=True).stdout.strip()
    if got != want:
        subprocess.run([py, "-m", "pip", "install", "-q", *pins], check=True)
    return py


def derive_images() -> None:
    from PIL import Image

    rocket = Image.open(SOURCE / "rocket.jpg").convert("RGB")  # 640x427
    chelsea = Image.open(SOURCE / "chelsea.png").convert("RGB")  # 451x300
    camera = Image.open(SOURCE / "camera.png")  # 512x512 L
    horse = Image.open(SOURCE / "horse.png")  # 400x328 RGBA
    bic = Image.Resampling.BICUBIC
    chelsea.crop((75, 0, 375, 300)).resize((96, 96), bic).save(IMAGES / "square.png")
    rocket.crop((250, 0, 400, 427)).resize((48, 136), bic).save(IMAGES / "tall.png")
    chelsea.resize((150, 40), bic).save(IMAGES / "wide.png")
    rocket.resize((5, 4), bic).save(IMAGES / "tiny_5x4.png")
    rocket.resize((3, 2), bic).save(IMAGES / "tiny_3x2.png")
    chelsea.resize((333, 217), bic).save(IMAGES / "odd_333x217.jpg", quality=60)
    camera.resize((64, 64), bic).save(IMAGES / "gray.png")
    horse.resize((80, 66), bic).save(IMAGES / "rgba.png")
    chelsea.resize((90, 60), bic).quantize(64).save(IMAGES / "palette.png")
    (IMAGES / "anim.gif").write_bytes((SOURCE / "no_time_for_that_tiny.gif").read_bytes())
    # Stored sideways with EXIF Orientation=6 ("rotate 90 CW to display"): decoders that honour
    # EXIF show 70x104 upright; those that don't show 104x70.
    exif = Image.Exif()
    exif[0x0112] = 6
    rocket.resize((104, 70), bic).transpose(Image.Transpose.ROTATE_90).save(
        IMAGES / "exif_rot6.jpg", quality=90, exif=exif
    )
    rocket.resize((72, 48), bic).save(IMAGES / "webp.webp", lossless=True)
    # Elongated with both sides >= 256: the smallest image Gemma 3's pan and scan crops.
    chelsea.resize((600, 280), bic).save(IMAGES / "pan_600x280.jpg", quality=60)
    rocket.resize((4000, 3000), bic).save(IMAGES / "large_4000x3000.jpg", quality=30)
    rocket.crop((300, 0, 320, 427)).resize((60, 1400), bic).save(IMAGES / "very_tall_60x1400.png")
    chelsea.crop((0, 140, 451, 160)).resize((1400, 60), bic).save(IMAGES / "very_wide_1400x60.png")


def pack(arr):
    import numpy as np

    values, index = np.unique(arr.reshape(-1), return_inverse=True)
    assert len(values) <= 65536
    return {"values": values, "index": index.astype(np.uint16), "shape": np.array(arr.shape)}


def save_golden(family: str, name: str, tensors: dict, meta: dict) -> None:
    import numpy as np

    out = {}
    for key, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            for part, v in pack(arr).items():
                out[f"{key}.{part}"] = v
        else:
            out[key] = arr
    out["meta"] = np.array(json.dumps(meta))
    (GOLDENS / family).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDENS / family / (name.rsplit(".", 1)[0] + ".npz"), **out)


def qwen_tokenizer_dir() -> Path:
    # The Qwen2.5-VL tokenizer (vocab.json, merges.txt, tokenizer_config.json) is only needed to
    # count placeholders through the processors' own prompt expansion; it is not committed here.
    return Path(os.environ.get("HERDSMAN_QWEN2_5_VL_DIR", "/work/shared/fixtures/qwen2_5_vl"))


def record(summary: dict, family: str, processor_call, names, tensors_too: bool) -> None:
    """Run `processor_call` on each named test image; store its tensors (or, without
    `tensors_too`, only its integer outputs) and its metadata."""
    from transformers.image_utils import load_image

    for name in names:
        img = load_image(str(IMAGES / name))
        tensors, meta = processor_call(img)
        meta["image_size_hw"] = [img.height, img.width]
        if not tensors_too:
            tensors = {k: v for k, v in tensors.items() if v.dtype.kind != "f"}
            meta["pixel_values_shape"] = meta.get("pixel_values_shape")
        save_golden(family, name, tensors, meta)
        summary.setdefault(family, {})[name] = meta


def generate() -> None:
    import numpy as np
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.processing_utils import ProcessorMixin

    # The Qwen processors insist on a video processor, and 4.57's needs torchvision; images never
    # touch it, so skip the type check rather than install torch.
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None  # type: ignore
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    summary: dict = {}

    def run(family, processor_call, names, tensors_too):
        record(summary, family, processor_call, names, tensors_too)

    for family in ("qwen2_5_vl", "qwen3_vl"):
        cfg = json.loads((CONFIGS / family / "preprocessor_config.json").read_text())
        cfg.pop("image_processor_type", None)
        cfg.pop("processor_class", None)
        ip = Qwen2VLImageProcessor(**cfg)
        # 4.57's slow __init__ replaces a valid `size` with its default; the fast processor the
        # published Qwen3-VL config names honours it. Pass it per call to get the real values.
        call_kwargs = {"size": cfg["size"]} if "size" in cfg else {}
        proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok)

        def qwen(img, ip=ip, proc=proc, call_kwargs=call_kwargs):
            # Copies: the processors pop from the kwargs they are given.
            out = ip(images=[img], return_tensors="np", **json.loads(json.dumps(call_kwargs)))
            text = "<|vision_start|><|image_pad|><|vision_end|>"
            ids = proc(
                text=[text],
                images=[img],
                return_tensors="np",
                **json.loads(json.dumps(call_kwargs)),
            )
            pad = tok.convert_tokens_to_ids("<|image_pad|>")
            n = int((ids["input_ids"][0] == pad).sum())
            pv = out["pixel_values"].astype(np.float32)
            return {"pixel_values": pv, "image_grid_thw": out["image_grid_thw"]}, {
                "num_placeholders": n,
                "pixel_values_shape": list(pv.shape),
            }

        run(family, qwen, TENSOR_IMAGES, True)
        run(family, qwen, SHAPE_IMAGES, False)

    cfg = json.loads((CONFIGS / "llava_1_5" / "preprocessor_config.json").read_text())
    clip = CLIPImageProcessor(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    ltok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    ltok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    lproc = LlavaProcessor(
        image_processor=clip,
        tokenizer=ltok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )

    def llava(img):
        out = clip(images=[img], return_tensors="np")
        ids = lproc(text=["<image>"], images=[img], return_tensors="np")
        n = int((ids["input_ids"][0] == lproc.image_token_id).sum())
        pv = out["pixel_values"].astype(np.float32)
        return {"pixel_values": pv}, {"num_placeholders": n, "pixel_values_shape": list(pv.shape)}

    run("llava_1_5", llava, TENSOR_IMAGES, True)
    run("llava_1_5", llava, SHAPE_IMAGES, False)

    cfg = json.loads((CONFIGS / "llava_next" / "preprocessor_config.json").read_text())
    nxt = LlavaNextImageProcessor(
        **{k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")}
    )
    # Values of llava-hf/llava-v1.6-mistral-7b-hf's processor_config.json.
    nproc = LlavaNextProcessor(
        image_processor=nxt,
        tokenizer=ltok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )

    def llava_next(img):
        out = nxt(images=[img], return_tensors="np")
        ids = nproc(text=["<image>"], images=[img], return_tensors="np")
        n = int((ids["input_ids"][0] == nproc.image_token_id).sum())
        pv = out["pixel_values"].astype(np.float32)
        return {"pixel_values": pv, "image_sizes": out["image_sizes"]}, {
            "num_placeholders": n,
            "pixel_values_shape": list(pv.shape),
        }

    # Up to five 336x336 tiles per image: tensors for a few shapes, counts and shapes for all.
    few = ["square.png", "tall.png", "wide.png", "odd_333x217.jpg", "rgba.png"]
    run("llava_next", llava_next, few, True)
    run("llava_next", llava_next, [n for n in TENSOR_IMAGES if n not in few] + SHAPE_IMAGES, False)
    generate_pixtral_gemma3(ltok, run)
    generate_mllama(run)
    write_chat_prompts()
    # Llama 4 is added by the --llama4 pass (another venv); keep what it last wrote.
    old = GOLDENS / "summary.json"
    if old.exists() and "llama4" in json.loads(old.read_text()):
        summary["llama4"] = json.loads(old.read_text())["llama4"]
    write_summary(summary)


# Whole prompts, for the gateway's image tests: a chat with images rendered by the Qwen2.5-VL
# processor's own chat template and expanded by its own call (what vLLM's server sends).
CHAT_GOLDEN = GOLDENS / "qwen2_5_vl_chat.json"
CHAT_QUESTION = "What is in this picture?"
CHAT_IMAGES = {"one": ["gray.png"], "two": ["gray.png", "wide.png"]}
BUNDLED_VL = ROOT / "models" / "qwen2_5_vl"


def chat_prompts() -> dict:
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.image_utils import load_image
    from transformers.processing_utils import ProcessorMixin

    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None  # type: ignore
    cfg = json.loads((BUNDLED_VL / "preprocessor_config.json").read_text())
    cfg.pop("image_processor_type", None)
    cfg.pop("processor_class", None)
    template = json.loads((BUNDLED_VL / "chat_template.json").read_text())["chat_template"]
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**cfg),
        tokenizer=AutoTokenizer.from_pretrained(BUNDLED_VL),
        chat_template=template,
    )
    out = {}
    for case, names in CHAT_IMAGES.items():
        parts = [{"type": "image"} for _ in names] + [{"type": "text", "text": CHAT_QUESTION}]
        messages = [{"role": "user", "content": parts}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [load_image(str(IMAGES / name)) for name in names]
        ids = proc(text=[text], images=images, return_tensors="np")["input_ids"][0]
        out[case] = {"images": names, "input_ids": [int(i) for i in ids]}
    return out


def write_chat_prompts() -> None:
    CHAT_GOLDEN.write_text(json.dumps(chat_prompts(), indent=1, sort_keys=True) + "\n")


def write_summary(summary: dict) -> None:
    (GOLDENS / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def generate_pixtral_gemma3(tok, run) -> None:
    import numpy as np
    from transformers import (
        Gemma3ImageProcessor,
        Gemma3Processor,
        PixtralImageProcessor,
        PixtralProcessor,
    )

    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "[IMG]", "[IMG_BREAK]", "[IMG_END]",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>",
            ]
        }
    )  # fmt: skip

    def load(family):
        cfg = json.loads((CONFIGS / family / "preprocessor_config.json").read_text())
        return {
            k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")
        }

    pix = PixtralImageProcessor(**load("pixtral"))
    # mistral-community/pixtral-12b processor_config.json: patch_size 16, spatial_merge_size 1.
    pproc = PixtralProcessor(image_processor=pix, tokenizer=tok, patch_size=16)
    img_ids = set(pproc.image_ids)

    def pixtral(img):
        out = pix(images=[img], return_tensors="np")
        ids = pproc(text=["[IMG]"], images=[img], return_tensors="np")["input_ids"][0]
        pv = out["pixel_values"].astype(np.float32)
        return {"pixel_values": pv, "image_sizes": out["image_sizes"]}, {
            "num_placeholders": int(sum(int(i) in img_ids for i in ids)),
            "pixel_values_shape": list(pv.shape),
        }

    few = ["square.png", "tall.png", "wide.png", "odd_333x217.jpg", "gray.png", "tiny_3x2.png"]
    run("pixtral", pixtral, few, True)
    run("pixtral", pixtral, [n for n in TENSOR_IMAGES if n not in few] + SHAPE_IMAGES, False)

    tok.image_token, tok.boi_token, tok.eoi_token = (
        "<image_soft_token>", "<start_of_image>", "<end_of_image>"
    )  # fmt: skip
    tok.image_token_id = tok.convert_tokens_to_ids(tok.image_token)
    for family in ("gemma3", "gemma3_pan_and_scan"):
        cfg = load(family)
        pas = bool(cfg.pop("do_pan_and_scan", None))
        cfg.pop("_comment", None)
        gip = Gemma3ImageProcessor(**cfg)
        gproc = Gemma3Processor(image_processor=gip, tokenizer=tok)

        def gemma(img, gip=gip, gproc=gproc, pas=pas):
            # The processor's images_kwargs defaults, which the bare image processor lacks.
            out = gip(
                images=[img],
                return_tensors="np",
                do_pan_and_scan=pas,
                pan_and_scan_min_crop_size=256,
                pan_and_scan_max_num_crops=4,
                pan_and_scan_min_ratio_to_activate=1.2,
            )
            ids = gproc(
                text=["<start_of_image>"], images=[img], return_tensors="np", do_pan_and_scan=pas
            )["input_ids"][0]
            pv = out["pixel_values"].astype(np.float32)
            return {"pixel_values": pv, "num_crops": np.asarray(out["num_crops"])}, {
                "num_placeholders": int((ids == tok.image_token_id).sum()),
                "pixel_values_shape": list(pv.shape),
            }

        # 896x896 outputs are large: tensors for a few images, shapes and counts for the rest.
        few = ["pan_600x280.jpg"] if pas else ["square.png", "tall.png"]
        run(family, gemma, few, True)
        run(family, gemma, [n for n in TENSOR_IMAGES if n not in few] + SHAPE_IMAGES, False)


def generate_mllama(run) -> None:
    import numpy as np
    from transformers import MllamaImageProcessor

    cfg = json.loads((CONFIGS / "mllama" / "preprocessor_config.json").read_text())
    drop = ("image_processor_type", "processor_class")
    mip = MllamaImageProcessor(**{k: v for k, v in cfg.items() if k not in drop})

    def mllama(img):
        out = mip(images=[[img]], return_tensors="np")
        pv = out["pixel_values"].astype(np.float32)
        tensors = {
            "pixel_values": pv,
            "aspect_ratio_ids": out["aspect_ratio_ids"],
            "aspect_ratio_mask": out["aspect_ratio_mask"],
            "num_tiles": np.asarray(out["num_tiles"], dtype=np.int64),
        }
        # MllamaProcessor leaves <|image|> as one token: cross-attention, no expansion.
        return tensors, {"num_placeholders": 1, "pixel_values_shape": list(pv.shape)}

    few = ["wide.png", "odd_333x217.jpg"]
    run("mllama", mllama, few, True)
    run("mllama", mllama, [n for n in TENSOR_IMAGES if n not in few] + SHAPE_IMAGES, False)


def import_torchvision() -> None:
    """PyPI's torchvision wheels are CUDA builds; next to a CPU torch their C++ ops (nms,
    roi_align, ...) do not load, and `import torchvision` then fails registering fake kernels for
    those ops. The transforms the Llama 4 processor uses are plain torch, so skip that module."""
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision  # noqa: F401


# (height, width) of synthetic images for Llama 4's tiling decision: every branch of get_best_fit
# (smallest upscale, ties broken by area, largest downscale) and both resize floors. No 1x1: see
# TENSOR_IMAGES.
LLAMA4_DECISION_SIZES = [
    (96, 96), (136, 48), (1400, 60), (60, 1400), (337, 337), (336, 672), (1080, 1920),
    (3000, 4000), (336, 336), (337, 336), (5000, 100), (100, 5000), (700, 2100),
]  # fmt: skip


def generate_llama4() -> None:
    """Llama4ImageProcessorFast (torchvision) and Llama4Processor's prompt expansion; run in
    VENV_TORCH by `--llama4`."""
    import_torchvision()
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, Llama4ImageProcessorFast, Llama4Processor
    from transformers.models.llama4 import image_processing_llama4_fast as fast

    torch.set_num_threads(1)
    cfg = json.loads((CONFIGS / "llama4" / "preprocessor_config.json").read_text())
    drop = ("image_processor_type", "processor_class")
    lip = Llama4ImageProcessorFast(**{k: v for k, v in cfg.items() if k not in drop})
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    specials = ["<|image|>", "<|image_start|>", "<|image_end|>", "<|patch|>",
                "<|tile_x_separator|>", "<|tile_y_separator|>"]  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": specials})
    # meta-llama/Llama-4-Scout-17B-16E-Instruct: vision_config patch_size 14,
    # pixel_shuffle_ratio 0.5 (see PROVENANCE.md).
    proc = Llama4Processor(
        image_processor=lip, tokenizer=tok, patch_size=14, pixel_shuffle_ratio=0.5
    )
    # The Qwen tokenizer adds no BOS: every id of "<|image|>"'s expansion is a placeholder.
    assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]

    def llama4(img):
        out = lip(images=[img], return_tensors="pt")
        pv = out["pixel_values"].float().numpy()
        ratios = out["aspect_ratios"].numpy().astype(np.int64)
        ids = proc(text=["<|image|>"], images=[img], return_tensors="pt")["input_ids"][0]
        return {"pixel_values": pv, "aspect_ratios": ratios}, {
            "num_placeholders": len(ids),
            "pixel_values_shape": list(pv.shape),
            # torchvision's antialiased bilinear resize against Pillow's (see llama4.py).
            "tolerance": LLAMA4_TOLERANCE,
        }

    summary = json.loads((GOLDENS / "summary.json").read_text())
    summary.pop("llama4", None)
    # Tensors for a one-tile image and for one with two tiles plus the global tile.
    few = ["wide.png", "odd_333x217.jpg", "pan_600x280.jpg"]
    record(summary, "llama4", llama4, few, True)
    rest = [n for n in TENSOR_IMAGES if n not in few] + SHAPE_IMAGES
    record(summary, "llama4", llama4, rest, False)
    write_summary(summary)

    # The decision as Llama4ImageProcessorFast._preprocess takes it, with the same torch types
    # (its float32 arithmetic decides some resize floors).
    tile = cfg["size"]["height"]
    resolutions = torch.tensor(
        fast.find_supported_resolutions(cfg["max_patches"], fast.SizeDict(**cfg["size"]))
    )
    decisions = {"supported_resolutions": resolutions.tolist(), "cases": {}}
    for h, w in LLAMA4_DECISION_SIZES:
        img = Image.new("RGB", (w, h), (255, 255, 255))
        tensors, meta = llama4(img)
        size = torch.Size([h, w])
        canvas = fast.get_best_fit(size, resolutions, cfg["resize_to_max_canvas"])
        # Upscaling is capped at one tile (resize_to_max_canvas is false).
        target = (min(max(h, tile), canvas[0]), min(max(w, tile), canvas[1]))
        resized = fast.get_max_res_without_distortion(size, target)
        resized = (max(int(resized[0]), 1), max(int(resized[1]), 1))
        decisions["cases"][f"{h}x{w}"] = {
            "canvas": [int(x) for x in canvas],
            "resized": list(resized),
            "aspect_ratio": tensors["aspect_ratios"][0].tolist(),
            "num_tiles": meta["pixel_values_shape"][0],
            "num_placeholders": meta["num_placeholders"],
        }
        if (h, w) == (1400, 60):
            # White, 60 of 336 columns used: the padding and the global tile.
            save_golden("llama4", "white_1400x60.png", tensors, meta)
    path = GOLDENS / "llama4_decisions.json"
    path.write_text(json.dumps(decisions, indent=1) + "\n")


# torchvision's resampling differs from Pillow's by a level or two of uint8 in a few pixels
# (largest difference seen: 0.0117 after normalisation, 1.5 bfloat16 steps near 1.0).
LLAMA4_TOLERANCE = 0.02


def main() -> None:
    if os.environ.get("HERDSMAN_GOLDENS_INNER") != "1":
        env = dict(os.environ, HERDSMAN_GOLDENS_INNER="1")
        if "--chat-prompts" in sys.argv:
            argv = [ensure_venv(), __file__, "--chat-prompts"]
            raise SystemExit(subprocess.run(argv, env=env).returncode)
        if "--llama4" not in sys.argv:
            rc = subprocess.run([ensure_venv(), __file__], env=env).returncode
            if rc:
                raise SystemExit(rc)
        py = ensure_venv(VENV_TORCH, TORCH_PINS)
        raise SystemExit(subprocess.run([py, __file__, "--llama4"], env=env).returncode)
    GOLDENS.mkdir(parents=True, exist_ok=True)
    if "--chat-prompts" in sys.argv:  # only these
        write_chat_prompts()
    elif "--llama4" in sys.argv:
        generate_llama4()
    else:
        derive_images()
        generate()
    print(f"wrote {GOLDENS}")


if __name__ == "__main__":
    main()
