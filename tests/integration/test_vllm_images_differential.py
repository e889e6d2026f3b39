"""Images end to end: herdsman + vLLM's gRPC servicer against vLLM's own OpenAI server.

A tiny random-weight vision model with the real processor geometry, tokenizer and chat template
(make_tiny_qwen2_5_vl.py: Qwen2.5-VL; make_tiny_llava.py: LLaVA-1.5's CLIP side) is served twice
by the same vLLM build: by its OpenAI HTTP server, which decodes and preprocesses the images
itself (transformers' processor), and by its gRPC servicer behind herdsman, which decodes,
preprocesses and expands the placeholders itself and sends pixel values (raw uint8 ones for
Qwen2.5-VL: vLLM 0.32 normalizes its pixels on device, ``mm_device_do_normalize``).

The same chat requests (greedy) go to both; the answers must be the same: text, finish_reason,
usage, prompt and output token ids, and the logprobs of every generated token with its top
alternatives to 1e-4. With random weights, a pixel that differs moves the vision tower's output
and with it the logprobs, so equal logprobs mean equal pixel values, grids and positions.

The check is honest: the same image flipped (same size, same placeholder count) must change the
answer on both servers, or an image that was ignored would pass.

vLLM's processes run with ``vllm_shims/`` on PYTHONPATH: the CPU venv has no torchvision, which
transformers 5.19's Qwen2-VL modules import; the shim serves the PIL module in place of the
torchvision one (see its docstring). The pixels are what transformers computes without torchvision.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.conftest import MODELS, ROOT

from .conftest import (
    EAGER,
    HERE,
    MAX_MODEL_LEN,
    Gateway,
    VllmServer,
    _health_serving,
    engine_port,
    grpc_server_argv,
    launch_vllm,
    openai_ready,
    start_gateway_logged,
    vllm_env,
    wait_vllm_ready,
)

SERVED = "tiny-vision"
IMAGES = ROOT / "tests" / "multimodal" / "images"
FIXTURE = ROOT / "tests" / "fixtures" / "qwen2_5_vl"
CONFIGS = ROOT / "tests" / "multimodal" / "configs"
SHIMS = HERE / "vllm_shims"
IMAGE_PAD, VISION_END = 151655, 151653  # <|image_pad|>, <|vision_end|> (both models' template)


@dataclass(frozen=True)
class Family:
    script: str
    preprocessor: Path
    limit_mm: str  # --limit-mm-per-prompt


FAMILIES = {
    # Two images a prompt, no video (this venv cannot process one: no torchvision). width/height
    # only size the dummy image vLLM profiles and warms up with (the default is the largest image
    # max_pixels allows, 3584x3584: minutes of vision tower on 2 cores); real images are untouched.
    "qwen2_5_vl": Family(
        "make_tiny_qwen2_5_vl.py",
        CONFIGS / "qwen2_5_vl" / "preprocessor_config.json",
        '{"image": {"count": 2, "width": 448, "height": 448}, "video": 0}',
    ),
    "llava": Family(
        "make_tiny_llava.py",
        CONFIGS / "llava_1_5" / "preprocessor_config.json",
        '{"image": 2}',
    ),
}
USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")
MAX_TOKENS = 10
TOP_LOGPROBS = 3
LOGPROB_TOLERANCE = 1e-4
TIMEOUT = 180


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def vl_model(vllm_python: Path, family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"tiny-{family}")
    spec = FAMILIES[family]
    subprocess.run(
        [
            str(vllm_python),
            str(HERE / spec.script),
            str(FIXTURE),
            str(MODELS / "qwen3"),
            str(spec.preprocessor),
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@dataclass
class Answers:
    herdsman: dict
    vllm: dict


@dataclass
class Pair:
    """The two ways of serving the model."""

    family: str
    reference: VllmServer  # vLLM's OpenAI server
    engine: VllmServer  # vLLM's gRPC servicer
    gateway: Gateway  # herdsman in front of ``engine``
    answers: dict[str, Answers] = field(default_factory=dict)  # per case, asked once


@pytest.fixture(scope="module")
def pair(
    vllm_python: Path, family: str, vl_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    logs = tmp_path_factory.mktemp(f"{family}-logs")
    env = vllm_env(PYTHONPATH=str(SHIMS))
    http_port = engine_port()
    grpc_port = engine_port(taken=(http_port,))
    common = ["--limit-mm-per-prompt", FAMILIES[family].limit_mm]
    http_argv = [
        str(vllm_python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(vl_model),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--seed",
        "0",
        *EAGER,
        *common,
    ]
    grpc_argv = grpc_server_argv(vllm_python, vl_model, SERVED, grpc_port, *common)
    # Both start at once: a cold start is mostly one core's work (compiling, warming up).
    reference = launch_vllm(http_argv, logs / "vllm-http.log", f"127.0.0.1:{http_port}", env)
    engine = launch_vllm(grpc_argv, logs / "vllm-grpc.log", f"127.0.0.1:{grpc_port}", env)
    gateway = None
    try:
        wait_vllm_ready(reference, openai_ready)
        wait_vllm_ready(engine, _health_serving)
        gateway = start_gateway_logged(
            engine.address, logs / "gateway.log", "--model-path", str(vl_model)
        )
        print(
            f"{family}: vLLM OpenAI server ready in {reference.startup_seconds:.1f}s, "
            f"gRPC servicer in {engine.startup_seconds:.1f}s",
            file=sys.stderr,
        )
        yield Pair(family, reference, engine, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        reference.stop()
        engine.stop()


# --- the requests ---------------------------------------------------------------------------------


def data_url(name_or_bytes: str | bytes, mime: str | None = None) -> str:
    if isinstance(name_or_bytes, str):
        data = (IMAGES / name_or_bytes).read_bytes()
        mime = mime or ("image/png" if name_or_bytes.endswith(".png") else "image/jpeg")
    else:
        data = name_or_bytes
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def flipped_png(name: str) -> bytes:
    """The image mirrored left to right: same size, so the same placeholders, other pixels."""
    with Image.open(IMAGES / name) as img:
        out = io.BytesIO()
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, format="PNG")
        return out.getvalue()


def translucent_png(name: str) -> bytes:
    """The image with an alpha ramp from transparent (left) to opaque (right)."""
    with Image.open(IMAGES / name) as img:
        rgba = img.convert("RGBA")
        ramp = np.linspace(0, 255, rgba.width).round().astype(np.uint8)
        rgba.putalpha(Image.fromarray(np.tile(ramp, (rgba.height, 1))))
        out = io.BytesIO()
        rgba.save(out, format="PNG")
        return out.getvalue()


def one_image(name: str, question: str = "What is in this image?") -> list[dict]:
    return [{"role": "user", "content": [image_part(data_url(name)), text_part(question)]}]


# (case id, messages): PNG and JPEG, small, tall, wide, odd sizes, upscaled tiny ones, several
# colour modes, two images in one request, text on both sides of an image.
CASES: dict[str, list[dict]] = {
    "square_png_96x96": one_image("square.png"),
    "tall_png_48x136": one_image("tall.png"),
    "wide_png_150x40": one_image("wide.png"),
    "tiny_png_5x4_upscaled": one_image("tiny_5x4.png"),
    "odd_jpeg_333x217": one_image("odd_333x217.jpg"),
    "pan_jpeg_600x280": one_image("pan_600x280.jpg"),
    "exif_rotated_jpeg": one_image("exif_rot6.jpg"),
    "gray_png": one_image("gray.png"),
    "palette_png": one_image("palette.png"),
    # RGBA, but transparency only over white pixels: dropping alpha and compositing onto white
    # (the two ways differ; test_translucent_png) give the same pixels here.
    "rgba_png_alpha_over_white": one_image("rgba.png"),
    "two_images": [
        {
            "role": "user",
            "content": [
                text_part("Compare"),
                image_part(data_url("tall.png")),
                text_part("with"),
                image_part(data_url("odd_333x217.jpg")),
                text_part("please."),
            ],
        }
    ],
    "text_before_and_after": [
        {"role": "system", "content": "You describe pictures."},
        {
            "role": "user",
            "content": [
                text_part("Here is a photo:"),
                image_part(data_url("wide.png")),
                text_part("What colour dominates it?"),
            ],
        },
    ],
    "square_png_flipped": [
        {
            "role": "user",
            "content": [
                image_part(data_url(flipped_png("square.png"), "image/png")),
                text_part("What is in this image?"),
            ],
        }
    ],
}


def ask(address: str, messages: list[dict], **extra: object) -> dict:
    body = {
        "model": SERVED,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
        **extra,
    }
    response = httpx.post(f"http://{address}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def answers(pair: Pair, case: str) -> Answers:
    """Both servers' answers to one case (asked once per model)."""
    if case not in pair.answers:
        # return_token_ids (vLLM's extension, herdsman's too): prompt and output ids.
        ours = ask(pair.gateway.address, CASES[case], return_token_ids=True)
        theirs = ask(pair.reference.address, CASES[case], return_token_ids=True)
        pair.answers[case] = Answers(ours, theirs)
    return pair.answers[case]


def logprob_rows(body: dict) -> list[tuple[str, float, list[tuple[str, float]]]]:
    content = body["choices"][0]["logprobs"]["content"]
    return [
        (row["token"], row["logprob"], [(t["token"], t["logprob"]) for t in row["top_logprobs"]])
        for row in content
    ]


def assert_logprobs_close(ours: dict, theirs: dict) -> float:
    """Same tokens and top alternatives, logprobs within the tolerance; the largest gap."""
    mine, ref = logprob_rows(ours), logprob_rows(theirs)
    assert [r[0] for r in mine] == [r[0] for r in ref]
    gap = 0.0
    for i, ((token, lp, top), (_, ref_lp, ref_top)) in enumerate(zip(mine, ref, strict=True)):
        assert abs(lp - ref_lp) <= LOGPROB_TOLERANCE, (i, token, lp, ref_lp)
        assert [t for t, _ in top] == [t for t, _ in ref_top], (i, top, ref_top)
        for (t, a), (_, b) in zip(top, ref_top, strict=True):
            assert abs(a - b) <= LOGPROB_TOLERANCE, (i, t, a, b)
            gap = max(gap, abs(a - b))
    return gap


# --- the comparisons ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_vllm_openai_server(pair: Pair, case: str) -> None:
    got = answers(pair, case)
    ours, theirs = got.herdsman["choices"][0], got.vllm["choices"][0]
    assert ours["message"]["content"] == theirs["message"]["content"]
    assert ours["finish_reason"] == theirs["finish_reason"] == "length"
    assert {k: got.herdsman["usage"][k] for k in USAGE} == {k: got.vllm["usage"][k] for k in USAGE}
    assert got.vllm["usage"]["completion_tokens"] == MAX_TOKENS
    gap = assert_logprobs_close(got.herdsman, got.vllm)
    print(f"{pair.family} {case}: largest logprob gap {gap:.2e}", file=sys.stderr)
    # The ids: the whole prompt (template, expanded placeholders) and the output.
    assert got.herdsman["prompt_token_ids"] == got.vllm["prompt_token_ids"]
    assert ours["token_ids"] == theirs["token_ids"]
    assert len(theirs["token_ids"]) == MAX_TOKENS


def test_prompt_placeholders_match_herdsman_processor(pair: Pair, vl_model: Path) -> None:
    """vLLM's own prompt ids hold, per image, as many image tokens as herdsman's processor
    makes for it, inside <|vision_start|> ... <|vision_end|>."""
    from herdsman.multimodal import load_processor

    processor = load_processor(vl_model)
    got = answers(pair, "two_images")
    ids = got.vllm["prompt_token_ids"]
    assert len(ids) == got.herdsman["usage"]["prompt_tokens"]
    runs, run = [], 0
    for previous, token in zip([None, *ids], ids, strict=False):
        if token == IMAGE_PAD:
            run += 1
        elif previous == IMAGE_PAD:
            assert token == VISION_END, "an image's tokens end with <|vision_end|>"
            runs.append(run)
            run = 0
    sizes = []
    for name in ("tall.png", "odd_333x217.jpg"):
        with Image.open(IMAGES / name) as img:
            sizes.append(processor.num_placeholders_for(img.height, img.width))
    assert runs == sizes


def test_images_are_not_ignored(pair: Pair) -> None:
    """The same image mirrored: same size and prompt length, different answer, on both servers."""
    plain, flipped = answers(pair, "square_png_96x96"), answers(pair, "square_png_flipped")
    for side in ("herdsman", "vllm"):
        a, b = getattr(plain, side), getattr(flipped, side)
        assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
        (token_a, lp_a, _), (token_b, lp_b, _) = logprob_rows(a)[0], logprob_rows(b)[0]
        # More than float noise: with an image as good as ignored (normalized twice, say) the
        # first logprob moved by 1e-3; a mirrored image moves it by tenths or changes the token.
        assert token_a != token_b or abs(lp_a - lp_b) > 0.05, f"{side}: the image changed little"


def test_translucent_png(pair: Pair) -> None:
    """Transparent pixels go onto white, as vLLM's server composites them."""
    url = data_url(translucent_png("square.png"), "image/png")
    messages = [{"role": "user", "content": [image_part(url), text_part("What is this?")]}]
    ours, theirs = ask(pair.gateway.address, messages), ask(pair.reference.address, messages)
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    assert_logprobs_close(ours, theirs)


def test_stream_matches(pair: Pair) -> None:
    """Streaming through herdsman gives the text vLLM's server gives for the same images."""
    messages = CASES["two_images"]
    body = {"model": SERVED, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
    text = ""
    url = f"http://{pair.gateway.address}/v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    assert text == answers(pair, "two_images").vllm["choices"][0]["message"]["content"]
