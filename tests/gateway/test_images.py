"""Image inputs through the gateway: fetched safely, preprocessed, expanded, sent to the engine."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.conftest import MODELS, start_gateway, start_sim

from herdsman.engines import EngineRequest, SamplingParams
from herdsman.engines.sglang import SglangScheduler
from herdsman.engines.transport import NativeTransport
from herdsman.engines.vllm import VllmEngine
from herdsman.pipeline.images import ImageInputs

VL = MODELS / "qwen2_5_vl"
IMAGES = Path(__file__).resolve().parent.parent / "multimodal" / "images"
GOLDENS = IMAGES.parent / "goldens"
IMAGE = IMAGES / "gray.png"  # the image of the golden prompt "one"
DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
MODEL = "qwen2_5_vl"


def _data_url(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _messages(*urls: str) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [
        {"role": "user", "content": [*parts, {"type": "text", "text": "What is in this picture?"}]}
    ]


def _golden_prompt(case: str) -> list[int]:
    """The whole prompt of a chat with images as transformers makes it: the Qwen2.5-VL
    processor's chat template and its own placeholder expansion (scripts/multimodal_goldens.py
    --chat-prompts: goldens/qwen2_5_vl_chat.json), for ``_messages`` with the images the
    golden names."""
    return json.loads((GOLDENS / "qwen2_5_vl_chat.json").read_text())[case]["input_ids"]


def _expected_prompt_tokens(images: int) -> int:
    assert images == 1
    return len(_golden_prompt("one"))


@pytest.fixture(scope="module")
def vl_gateway(backend: str) -> Iterator[str]:
    sim = start_sim(VL, backend, "--itl-base-ms", "0")
    gateway = start_gateway(sim.address)  # tokenizer and processor config via GetTokenizer
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()
        sim.stop()


@pytest.mark.parametrize("case", ["one", "two"])
def test_prompt_with_images_is_transformers(vl_gateway: str, case: str) -> None:
    """The prompt the engine gets, image placeholders expanded, equals transformers' own."""
    names = json.loads((GOLDENS / "qwen2_5_vl_chat.json").read_text())[case]["images"]
    messages = _messages(*(_data_url(IMAGES / name) for name in names))
    data = httpx.post(
        f"{vl_gateway}/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": messages, "max_tokens": 3, "return_token_ids": True},
    ).json()
    assert data["prompt_token_ids"] == _golden_prompt(case)
    assert data["usage"]["prompt_tokens"] == len(_golden_prompt(case))


def test_image_expands_to_its_placeholder_count(vl_gateway: str) -> None:
    data = httpx.post(
        f"{vl_gateway}/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": _messages(DATA_URL), "max_tokens": 3},
    ).json()
    assert data["usage"]["prompt_tokens"] == _expected_prompt_tokens(1)
    # The same image again comes from the processed-image cache, with the same result.
    again = httpx.post(
        f"{vl_gateway}/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": _messages(DATA_URL), "max_tokens": 3},
    ).json()
    assert again["usage"]["prompt_tokens"] == data["usage"]["prompt_tokens"]


@pytest.fixture
def local_image_server() -> Iterator[str]:
    body = IMAGE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


def test_private_addresses_refused_by_default(vl_gateway: str, local_image_server: str) -> None:
    for url in (
        local_image_server,
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.png",
        "data:image/png;base64,!!!notbase64",
    ):
        response = httpx.post(
            f"{vl_gateway}/v1/chat/completions",
            timeout=30,
            json={"model": MODEL, "messages": _messages(url), "max_tokens": 3},
        )
        assert response.status_code == 400, url
        assert response.json()["error"]["param"].startswith("messages[0].content[0]")


def test_loopback_allowed_by_flag(backend: str, local_image_server: str) -> None:
    sim = start_sim(VL, backend, "--itl-base-ms", "0")
    gateway = start_gateway(sim.address, extra=("--allow-private-image-urls",))
    try:
        data = httpx.post(
            f"http://{gateway.address}/v1/chat/completions",
            timeout=60,
            json={"model": MODEL, "messages": _messages(local_image_server), "max_tokens": 2},
        ).json()
        assert data["usage"]["prompt_tokens"] == _expected_prompt_tokens(1)
    finally:
        gateway.stop()
        sim.stop()


def test_text_model_rejects_images(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "qwen3", "messages": _messages(DATA_URL), "max_tokens": 2},
    )
    assert response.status_code == 400


def test_tensors_reach_both_protos() -> None:
    pixels = np.arange(2 * 1176, dtype=np.float32).reshape(2, 1176)
    grid = np.array([[1, 1, 2]], dtype=np.int64)
    images = ImageInputs(
        pixel_values=pixels,
        model_specific={"image_grid_thw": grid},
        image_token_id=151655,
        placeholders=[(5, 1)],
        hashes=["h"],
        counts=[1],
    )
    request = EngineRequest(
        request_id="r", input_ids=[1] * 8, sampling=SamplingParams(), images=images
    )
    transport = NativeTransport("127.0.0.1:1")  # connects lazily: never, here
    vllm = VllmEngine("x", transport)._generate_request(request).mm_inputs
    assert list(vllm.pixel_values.shape) == [2, 1176] and vllm.pixel_values.dtype == "float32"
    assert np.frombuffer(vllm.pixel_values.inline, "<f4").tolist() == pixels.ravel().tolist()
    assert np.frombuffer(vllm.model_specific_tensors["image_grid_thw"].inline, "<i8").tolist() == [
        1,
        1,
        2,
    ]
    assert np.frombuffer(
        vllm.model_specific_tensors["patches_per_image"].inline, "<i8"
    ).tolist() == [2]
    assert [(p.offset, p.length) for p in vllm.mm_placeholders] == [(5, 1)]
    assert vllm.im_token_id == 151655 and list(vllm.mm_hashes) == ["h"]
    sglang = SglangScheduler("x", transport)._generate_request(request).mm_inputs
    assert np.frombuffer(sglang.pixel_values.data, "<f4").tolist() == pixels.ravel().tolist()
    assert list(sglang.model_specific_tensors["image_grid_thw"].shape) == [1, 3]


def test_images_per_request_are_capped(vl_gateway: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": DATA_URL}}] * 9
    response = httpx.post(
        f"{vl_gateway}/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 2},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "at most 8 images" in error["message"]
    assert error["param"] == "messages[0].content[8].image_url"


@pytest.fixture
def gated_image_server() -> Iterator[tuple[str, threading.Event]]:
    """Serves /together/N only once 3 requests are in at once (a sequential fetcher never gets
    there), and /never/ only once the test ends."""
    body = IMAGE.read_bytes()
    together = threading.Barrier(3, timeout=20)
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                if self.path.startswith("/never/"):
                    done.wait(60)
                else:
                    together.wait()
            except threading.BrokenBarrierError:
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", done
    done.set()
    server.shutdown()


def test_images_are_fetched_at_once_within_a_budget(
    gated_image_server: tuple[str, threading.Event],
) -> None:
    base_image_url, _ = gated_image_server
    sim = start_sim(VL, "vllm", "--itl-base-ms", "0")
    gateway = start_gateway(
        sim.address, extra=("--allow-private-image-urls", "--image-fetch-timeout", "3")
    )
    url = f"http://{gateway.address}/v1/chat/completions"

    def ask(*image_urls: str) -> httpx.Response:
        parts = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
        messages = [{"role": "user", "content": parts}]
        return httpx.post(
            url, timeout=60, json={"model": MODEL, "messages": messages, "max_tokens": 2}
        )

    try:
        three = ask(*(f"{base_image_url}/together/{i}.png" for i in range(3)))
        assert three.status_code == 200, three.text
        assert three.json()["usage"]["prompt_tokens"] > _expected_prompt_tokens(1)
        stuck = ask(f"{base_image_url}/together/x.png", f"{base_image_url}/never/y.png")
        assert stuck.status_code == 400
        assert "took longer than 3s" in stuck.json()["error"]["message"]
    finally:
        gateway.stop()
        sim.stop()
