"""Tokenizers preloaded before the gateway's processes fork (herdsman.serve.preload)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.conftest import QWEN3

from herdsman.tokenizer import load_model_tokenizer
from herdsman.tokenizer.loader import preload_model_tokenizers


def test_a_preloaded_tokenizer_is_taken_and_its_fast_encoder_checked_then(tmp_path: Path) -> None:
    model = tmp_path / "qwen3"
    shutil.copytree(QWEN3, model)
    preload_model_tokenizers([str(model)])
    taken = load_model_tokenizer(model)
    again = load_model_tokenizer(model)  # taken once: the next load reads the files
    assert taken is not again
    assert taken.backend == again.backend == "fastokens"
    text = "naïve café — 日本語 <|im_start|>user\nhi<|im_end|> 12345"
    for special in (False, True):
        assert taken.encode(text, add_special_tokens=special) == again.encode(
            text, add_special_tokens=special
        )


def test_a_preloaded_tokenizer_whose_files_changed_is_read_again(tmp_path: Path) -> None:
    model = tmp_path / "qwen3"
    shutil.copytree(QWEN3, model)
    preload_model_tokenizers([str(model)])
    config = model / "tokenizer_config.json"
    text = config.read_text()
    assert '"eos_token": "<|im_end|>"' in text
    config.write_text(text.replace('"eos_token": "<|im_end|>"', '"eos_token": "<|endoftext|>"'))
    loaded = load_model_tokenizer(model)
    assert loaded.special_tokens["eos_token"] == "<|endoftext|>"
    fresh = load_model_tokenizer(model)
    assert loaded.eos_token_ids == fresh.eos_token_ids
    assert loaded.special_tokens == fresh.special_tokens


@pytest.mark.parametrize(("bpe_threads", "warmed"), [(None, True), ("2", False)])
def test_a_process_forked_after_preloading_encodes_with_its_own_fast_encoder(
    bpe_threads: str | None, warmed: bool
) -> None:
    # Preloading must not start fastokens' worker threads: a forked child would inherit the
    # pool's state without them. With one BPE thread (the gateway's default) it warms fastokens
    # (an encode that starts no thread); with more (an operator's choice) it must not encode.
    # A fresh interpreter, so that no earlier encode has started anything.
    script = textwrap.dedent(
        f"""
        import os, sys
        from herdsman.tokenizer.loader import (
            _PRELOADED, load_model_tokenizer, preload_model_tokenizers,
        )

        def threads():
            return sorted(open(f"/proc/self/task/{{t}}/comm").read().strip()
                          for t in os.listdir("/proc/self/task"))

        preload_model_tokenizers([{str(QWEN3)!r}])
        assert len(threads()) == 1, threads()
        assert [entry.warmed for entry in _PRELOADED.values()] == [{warmed!r}]
        pid = os.fork()
        if pid == 0:
            model = load_model_tokenizer({str(QWEN3)!r})
            text = open({str(Path(__file__))!r}).read() * 200  # long: the pool's work
            ok = model.backend == "fastokens" and model.encode(
                text, add_special_tokens=False
            ) == model.tokenizer.encode(text, add_special_tokens=False).ids
            single = {bpe_threads is None!r}
            os._exit(0 if ok and (not single or len(threads()) == 1) else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("FASTOKENS_BPE_THREADS", None)
    if bpe_threads is not None:
        env["FASTOKENS_BPE_THREADS"] = bpe_threads
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=240, check=False)
    assert done.returncode == 0
