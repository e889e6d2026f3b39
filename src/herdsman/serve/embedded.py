"""The embedded engine of the demo: a simulated engine in a child process, on a real tokenizer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys

_READY = re.compile(rb"engine-sim listening on (\S+):(\d+)")


class EmbeddedEngineSim:
    def __init__(self, model_path: str, backend: str = "vllm", extra: list[str] | None = None):
        self._argv = [
            sys.executable,
            "-m",
            "herdsman.sim",
            "--model-path",
            model_path,
            "--port",
            "0",
            "--backend",
            backend,
            *(extra or []),
        ]
        self._process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self, timeout: float = 60.0) -> str:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, stdout=asyncio.subprocess.PIPE
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self._process.stdout.readline()
                if not line:
                    raise RuntimeError("the embedded engine-sim exited before it was ready")
                if match := _READY.search(line):
                    host, port = match.group(1).decode(), match.group(2).decode()
                    self.url = f"grpc://{host}:{port}"
                    return self.url

    async def stop(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            async with asyncio.timeout(5):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
