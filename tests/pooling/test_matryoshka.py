"""`dimensions` for a model whose config.json declares Matryoshka dimensions: the embedding's
first N values, normalised again; other sizes refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tests.conftest import start_gateway, start_sim

from herdsman.sim.pooling import embed_values
from herdsman.tokenizer import ModelTokenizer

from .conftest import EMBED, FAST, SEED

DIM = 32


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = tmp_path_factory.mktemp("matryoshka") / "embed"
    shutil.copytree(EMBED, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [8, 16]}))
    sim = start_sim(
        model,
        "sglang",
        *FAST,
        "--pooling",
        "embed",
        "--embedding-dim",
        str(DIM),
        "--seed",
        str(SEED),
    )
    gateway = start_gateway(sim.address, extra=("--workers", "1", "--no-warm-spare"))
    yield f"http://{gateway.address}"
    gateway.stop()
    sim.stop()


def test_dimensions_cut_and_renormalise(base_url: str, bert: ModelTokenizer) -> None:
    ids = bert.encode("the city by the sea", add_special_tokens=True)
    full = np.array(embed_values(ids, dim=DIM, seed=SEED), dtype=np.float64)
    body = httpx.post(
        f"{base_url}/v1/embeddings", json={"input": "the city by the sea", "dimensions": 16}
    ).json()
    got = body["data"][0]["embedding"]
    assert len(got) == 16
    assert np.allclose(got, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    assert abs(np.linalg.norm(got) - 1) < 1e-6


def test_other_dimensions_are_refused(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/embeddings", json={"input": "x", "dimensions": 12})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"
    assert "8, 16" in response.json()["error"]["message"]
