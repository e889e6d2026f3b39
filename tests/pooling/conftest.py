"""A gateway serving models of every kind at once: a generation model (qwen3, vLLM protocol), an
embedding model on both protocols, a cross-encoder and a 3-label classifier (SGLang protocol,
whose Embed reaches a classifier's head), and a classifier on the vLLM protocol (whose Embed
cannot). All engine-sims; tokenizers and configs from tests/fixtures/pooling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import QWEN3, ROOT, Proc, start_gateway, start_sim

from herdsman.tokenizer import ModelTokenizer, load_model_tokenizer

FIXTURES = ROOT / "tests" / "fixtures" / "pooling"
EMBED, RERANK, CLASSIFY = FIXTURES / "embed", FIXTURES / "rerank", FIXTURES / "classify"
SEED = 11
DIM = 48
MAX_LEN = 64
FAST = ("--ttft-base-ms", "1", "--prefill-ms-per-1k", "0", "--itl-base-ms", "1")


@dataclass
class Fleet:
    gateway: Proc
    sims: dict[str, Proc]
    aborts: Path

    @property
    def url(self) -> str:
        return f"http://{self.gateway.address}"


def _sim(model: Path, backend: str, name: str, *flags: str) -> Proc:
    return start_sim(
        model,
        backend,
        *FAST,
        "--served-model-name",
        name,
        "--seed",
        str(SEED),
        "--max-model-len",
        str(MAX_LEN),
        *flags,
    )


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    aborts = tmp_path_factory.mktemp("pooling") / "aborts.log"
    embed = ("--pooling", "embed", "--embedding-dim", str(DIM))
    sims = {
        "chat": start_sim(QWEN3, "vllm", *FAST, "--served-model-name", "chat"),
        "embed-vllm": _sim(EMBED, "vllm", "embed", *embed, "--abort-log", str(aborts)),
        "embed-sglang": _sim(EMBED, "sglang", "embed", *embed, "--abort-log", str(aborts)),
        "rerank": _sim(
            RERANK,
            "sglang",
            "rerank",
            "--pooling",
            "classify",
            "--num-labels",
            "1",
            "--embedding-dim",
            str(DIM),
        ),
        "classify": _sim(
            CLASSIFY,
            "sglang",
            "classify",
            "--pooling",
            "classify",
            "--id2label",
            '{"0": "negative", "1": "neutral", "2": "positive"}',
            "--embedding-dim",
            str(DIM),
        ),
        "classify-vllm": _sim(
            CLASSIFY, "vllm", "classify-vllm", "--pooling", "classify", "--num-labels", "3"
        ),
    }
    gateway = start_gateway(
        *(s.address for s in sims.values()),
        extra=("--workers", "1", "--no-warm-spare", "--max-retries", "0"),
    )
    yield Fleet(gateway, sims, aborts)
    gateway.stop()
    for sim in sims.values():
        sim.stop()


@pytest.fixture(scope="package")
def bert() -> ModelTokenizer:
    """The pooling models' tokenizer, as the gateway loads it."""
    return load_model_tokenizer(EMBED)
