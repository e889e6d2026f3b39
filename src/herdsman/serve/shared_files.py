"""Files the supervisor makes for its gateway processes to share: the admission board (the count
of requests in flight in each process) and the directory of the tokenizer's shared segment store.

A module of their own, with nothing but the standard library: the supervisor creates, clears and
removes these files, and must not import the pipeline or the tokenizers to do so.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from pathlib import Path

from herdsman.pids import pid_alive

_SLOT = 8  # bytes per process slot: one native int64
_STORE_DIR_PREFIX = "herdsman-tokcache-"


class SharedBoard:
    """Counts of every gateway process in a small file mapped by all of them (in /dev/shm or the
    supervisor's temporary directory). Each process writes only its own aligned 8-byte slot.

    A gateway-wide concurrency limit reads it (``herdsman.pipeline.admission.InFlightBoard``)."""

    def __init__(self, path: Path, slots: int, index: int) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 (kept open for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), slots * _SLOT)
        self._counts = memoryview(self._map).cast("q")
        self._index = index

    @staticmethod
    def create(path: Path, slots: int) -> None:
        path.write_bytes(bytes(slots * _SLOT))

    @staticmethod
    def clear_slot(path: Path, index: int) -> None:
        """The supervisor zeroes a dead process's slot before its replacement starts."""
        with open(path, "r+b") as f:
            f.seek(index * _SLOT)
            f.write(bytes(_SLOT))

    def total(self) -> int:
        return sum(self._counts)

    def publish(self, count: int) -> None:
        self._counts[self._index] = count


def make_store_directory() -> str:
    """A fresh directory for one gateway run's shared segment store
    (``herdsman.tokenizer.shared_store``), in RAM (/dev/shm) where the system has it.

    Directories left by gateways that were killed (their pid is in the name) are removed first.
    """
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    for stale in Path(parent).glob(f"{_STORE_DIR_PREFIX}*"):
        pid = stale.name[len(_STORE_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_STORE_DIR_PREFIX}{os.getpid()}-", dir=parent)


def remove_store_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(directory)
