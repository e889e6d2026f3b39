#!/usr/bin/env python3
"""Write models/qwen2_5_vl/tokenizer.json as transformers builds it from the fixture's files.

    python scripts/qwen2_5_vl_tokenizer.py [--source ../shared/fixtures/qwen2_5_vl]

The Qwen2.5-VL fixture ships the "slow" files (vocab.json, merges.txt) and tokenizer_config.json,
no tokenizer.json. transformers' AutoTokenizer converts them into the fast tokenizer it uses;
this script runs that conversion (transformers 4.57.6, in the venv scripts/multimodal_goldens.py
makes) and saves the result, so herdsman loads exactly what transformers would. Its vocabulary
and merges are Qwen3's, but its added tokens are not: Qwen3 adds <think>, </think>,
<tool_response> and </tool_response>, which Qwen2.5-VL encodes as plain text.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "models" / "qwen2_5_vl" / "tokenizer.json"
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")

CONVERT = """
import sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
assert not tokenizer.is_fast or type(tokenizer).__name__ == "Qwen2TokenizerFast", type(tokenizer)
tokenizer.backend_tokenizer.save(sys.argv[2])
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/fixtures/qwen2_5_vl")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from multimodal_goldens import ensure_venv

    python = ensure_venv()
    with tempfile.TemporaryDirectory() as work:
        for name in FILES:  # only the slow files: transformers must convert, not load a fast one
            shutil.copy(args.source / name, work)
        if TARGET.is_symlink() or TARGET.exists():
            TARGET.unlink()
        env = dict(os.environ, TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
        subprocess.run([str(python), "-c", CONVERT, work, str(TARGET)], check=True, env=env)
    digest = hashlib.sha256(TARGET.read_bytes()).hexdigest()
    print(f"wrote {TARGET.relative_to(ROOT)} (sha256 {digest})")
    for name in FILES:
        source = hashlib.sha256((args.source / name).read_bytes()).hexdigest()
        print(f"  from {name}: sha256 {source}")


if __name__ == "__main__":
    main()
