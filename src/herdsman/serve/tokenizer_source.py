"""Where the gateway's tokenizer comes from: a local directory, or the worker itself."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import zipfile
from pathlib import Path

from herdsman.engines import EngineClient

log = logging.getLogger(__name__)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "herdsman" / "tokenizers"


def _safe_extract(data: bytes, target: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        for member in bundle.infolist():
            name = Path(member.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"tokenizer bundle has an unsafe path: {member.filename!r}")
        bundle.extractall(target)


def _model_dir(root: Path) -> Path:
    """The directory holding tokenizer.json (bundles may nest it one level down)."""
    if (root / "tokenizer.json").is_file():
        return root
    for found in sorted(root.rglob("tokenizer.json")):
        return found.parent
    raise ValueError("the worker's tokenizer bundle has no tokenizer.json")


async def fetch_from_worker(engine: EngineClient) -> Path:
    """Download the worker's tokenizer (sha256-checked), unpack it once, return its directory."""
    data, sha256 = await engine.fetch_tokenizer()
    target = cache_root() / sha256
    if not target.is_dir():
        staging = target.with_name(f"{sha256}.partial-{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        _safe_extract(data, staging)
        # Another gateway process may have unpacked the same bundle first; theirs is as good.
        with contextlib.suppress(OSError):
            staging.rename(target)
        log.info("tokenizer from %s unpacked to %s (%d bytes)", engine.address, target, len(data))
    return _model_dir(target)
