"""Every real tokenizer the tests have, loaded once per test session.

qwen3 and llama3 are the bundled model directories (models/). The others live in
tests/fixtures/tokenizers/<name>/ with tokenizer.json xz-compressed (see PROVENANCE.md there):
the first use decompresses them, checks the sha256 of the original file, and loads the directory
with ``load_model_tokenizer`` like the gateway does. Nothing is read from outside the repository.
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import lzma
import shutil
import tempfile
from pathlib import Path

from herdsman.tokenizer import ModelTokenizer, load_model_tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizers"
BUNDLED = {"qwen3": ROOT / "models" / "qwen3", "llama3": ROOT / "models" / "llama3"}

# sha256 of each original (uncompressed) tokenizer.json, as /work/shared/fixtures/MANIFEST.json
# records it.
TOKENIZER_SHA256 = {
    "deepseek_v3": "621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41",
    "deepseek_v4": "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf",
    "gpt_oss": "0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3",
}
# A chat template rendered with another model's tokenizer: DeepSeek-V3.1 uses the V3 vocabulary.
TEMPLATE_ONLY = {"deepseek_v3_1": "deepseek_v3"}

# Every loadable tokenizer: the property tests run over all of them.
TOKENIZERS = ("qwen3", "llama3", "deepseek_v3", "deepseek_v4", "gpt_oss")
# (tokenizer, chat template) pairs for the cache tests; deepseek_v4 ships no template.
CHAT_MODELS = ("qwen3", "llama3", "deepseek_v3", "deepseek_v3_1", "deepseek_v4", "gpt_oss")


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="herdsman-test-tokenizers-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def model_dir(name: str) -> Path:
    """A model directory holding a plain tokenizer.json for ``name``."""
    if name in BUNDLED:
        return BUNDLED[name]
    if name in TEMPLATE_ONLY:
        target = _workdir() / name
        shutil.copytree(model_dir(TEMPLATE_ONLY[name]), target)
        shutil.copy(FIXTURES / name / "chat_template.jinja", target)  # wins over the config's
        return target
    source = FIXTURES / name
    target = _workdir() / name
    target.mkdir()
    for path in source.iterdir():
        if path.name == "tokenizer.json.xz":
            data = lzma.decompress(path.read_bytes())
            digest = hashlib.sha256(data).hexdigest()
            assert digest == TOKENIZER_SHA256[name], f"{path}: sha256 {digest}"
            (target / "tokenizer.json").write_bytes(data)
        elif path.suffix in (".json", ".jinja"):
            shutil.copy(path, target)
    return target


@functools.cache
def tokenizer(name: str, *, fast: bool = True) -> ModelTokenizer:
    """The session's shared instance (no cache enabled: callers must not enable one)."""
    return load_model_tokenizer(model_dir(name), fast=fast)


@functools.cache
def _planned(name: str) -> ModelTokenizer:
    planned = copy.copy(tokenizer(name))
    planned.enable_cache(1, 1)  # plans L1 splitting once; copies inherit the plan
    return planned


def with_cache(name: str, l0_bytes: int, l1_bytes: int) -> ModelTokenizer:
    """A copy of the shared fast tokenizer with a fresh, empty cache of these budgets."""
    fresh = copy.copy(_planned(name))
    fresh.enable_cache(l0_bytes, l1_bytes)
    return fresh
