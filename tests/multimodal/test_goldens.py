"""Our processors against transformers 4.57.6's own outputs (scripts/multimodal_goldens.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from herdsman.multimodal import create_processor, decode_image

HERE = Path(__file__).parent
GOLDENS = HERE / "goldens"
SUMMARY = json.loads((GOLDENS / "summary.json").read_text())


def unpack(z: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    values, index, shape = z[f"{key}.values"], z[f"{key}.index"], z[f"{key}.shape"]
    return values[index.astype(np.int64)].reshape(tuple(shape))


def processor(family: str):
    cfg = json.loads((HERE / "configs" / family / "preprocessor_config.json").read_text())
    return create_processor(cfg)


CASES = [(family, name) for family, images in SUMMARY.items() for name in sorted(images)]


@pytest.mark.parametrize(("family", "name"), CASES)
def test_matches_transformers(family: str, name: str) -> None:
    meta = SUMMARY[family][name]
    img = decode_image((HERE / "images" / name).read_bytes())
    assert [img.height, img.width] == meta["image_size_hw"]
    proc = processor(family)
    out = proc.preprocess([img])
    assert list(out.pixel_values.shape) == meta["pixel_values_shape"]
    assert out.pixel_values.dtype == np.float32
    if "num_placeholders" in meta:
        assert out.num_placeholders == [meta["num_placeholders"]]
        assert proc.num_placeholders_for(img.height, img.width) == meta["num_placeholders"]
    # Exact everywhere except Llama 4, whose reference resamples with torchvision.
    tolerance = meta.get("tolerance", 1e-5)
    with np.load(GOLDENS / family / (name.rsplit(".", 1)[0] + ".npz")) as z:
        for key in z.files:
            if key == "meta" or key.endswith((".index", ".shape")):
                continue
            if key.endswith(".values"):
                base = key[: -len(".values")]
                want = unpack(z, base)
                got = out.pixel_values if base == "pixel_values" else out.model_specific[base]
                assert got.shape == want.shape
                assert float(np.max(np.abs(got - want))) <= tolerance
            else:
                np.testing.assert_array_equal(out.model_specific[key], z[key])
