"""GetTokenizer: the model directory's tokenizer files as one zip, streamed in chunks."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from smg_grpc_proto.generated import common_pb2

# The files smg-grpc-servicer's GetTokenizer bundles for vLLM (its tokenizer_bundle.py).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "tiktoken.model",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
CHUNK_BYTES = 512 * 1024
# A fixed timestamp keeps the zip, and so its sha256, identical across restarts.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class TokenizerBundle:
    data: bytes
    sha256: str
    files: tuple[str, ...]


def build_tokenizer_bundle(model_dir: Path) -> TokenizerBundle:
    buffer = io.BytesIO()
    files: list[str] = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in TOKENIZER_FILES:
            path = model_dir / name
            if not path.is_file():
                continue
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), compresslevel=1)
            files.append(name)
    data = buffer.getvalue()
    return TokenizerBundle(data, hashlib.sha256(data).hexdigest(), tuple(files))


async def stream_tokenizer_bundle(
    bundle: TokenizerBundle, context: grpc.aio.ServicerContext
) -> None:
    data = bundle.data
    offsets = range(0, len(data), CHUNK_BYTES)
    last = offsets[-1]
    for offset in offsets:
        # The proto's contract: the digest rides on the final chunk only.
        await context.write(
            common_pb2.GetTokenizerChunk(
                data=data[offset : offset + CHUNK_BYTES],
                sha256=bundle.sha256 if offset == last else "",
            )
        )


class LazyTokenizerBundle:
    """Zips on first request, off the event loop, so start-up stays fast and streams unaffected."""

    def __init__(self, model_dir: Path) -> None:
        self._model_dir = model_dir
        self._bundle: TokenizerBundle | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> TokenizerBundle:
        async with self._lock:
            if self._bundle is None:
                self._bundle = await asyncio.to_thread(build_tokenizer_bundle, self._model_dir)
            return self._bundle
