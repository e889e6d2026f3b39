"""L1 segments shared by every gateway process: one LMDB file in shared memory that each maps.

The turns of one conversation land on whichever process the kernel picks (SO_REUSEPORT), so a
per-process L1 holds only a 1/N share of a conversation's earlier segments. With this store every
process sees every segment any process encoded. LMDB fits the job: readers take no locks (a read
is a B-tree walk in mapped memory, ~0.5 µs), writers are serialised by a robust process-shared
mutex (a writer that dies does not wedge the others), and the data lives in one file under
/dev/shm that the supervisor creates and removes.

Keys are the 256-bit BLAKE2b of the segment's UTF-8 text, so segments of any length fit LMDB's
key limit and a collision is not a practical concern; values are the ids as native uint32.

Eviction is generational. New entries go into the current generation; when it has taken its share
of the budget, the older generation is dropped whole and the two swap. A hit in the older
generation is copied forward, so what was used during the last generation survives: LRU's
behaviour without a write to shared pages on every hit and without per-entry bookkeeping.
"""

from __future__ import annotations

import logging
import struct
from array import array
from collections.abc import Sequence
from hashlib import blake2b
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)

_GENERATIONS = (b"gen0", b"gen1")
_CURRENT = b"current"  # meta key: index of the generation that takes new entries
_USED = b"used"  # meta key: bytes the current generation holds
# Two generations plus LMDB's own pages (branch pages, freelist) must fit the map.
_GENERATION_SHARE = 0.4
_PAGE = 4096
_LEAF_OVERHEAD = 16
_INLINE_LIMIT = 2000  # larger values take overflow pages of their own


def segment_key(piece: str) -> bytes:
    return blake2b(piece.encode("utf-8", "surrogatepass"), digest_size=32).digest()


def _entry_cost(value_len: int) -> int:
    if value_len > _INLINE_LIMIT:
        return -(-(value_len + _LEAF_OVERHEAD) // _PAGE) * _PAGE
    return 32 + value_len + _LEAF_OVERHEAD


class SharedSegmentStore:
    """Segment text -> token ids, shared by every process that opens the same directory."""

    def __init__(self, directory: str | Path, budget: int) -> None:
        self.directory = Path(directory)
        self.budget = budget
        self._env = lmdb.open(
            str(self.directory),
            map_size=budget,
            max_dbs=3,
            sync=False,  # the store is a cache in RAM: durability buys nothing
            metasync=False,
            readahead=False,
            meminit=False,
            max_readers=1024,
        )
        self._meta = self._env.open_db(b"meta")
        self._gens = tuple(self._env.open_db(name) for name in _GENERATIONS)
        self._limit = int(budget * _GENERATION_SHARE)
        self._promote: list[tuple[bytes, bytes]] = []
        self.hits = self.misses = self.rotations = self.write_failures = 0

    def get_many(self, pieces: Sequence[str]) -> list[array | None]:
        """Ids for each piece, or None; hits in the older generation are queued to move forward."""
        out: list[array | None] = []
        with self._env.begin() as txn:
            current = _current(txn, self._meta)
            new, old = self._gens[current], self._gens[1 - current]
            for piece in pieces:
                key = segment_key(piece)
                value = txn.get(key, db=new)
                if value is None:
                    value = txn.get(key, db=old)
                    if value is not None:
                        self._promote.append((key, value))
                if value is None:
                    self.misses += 1
                    out.append(None)
                    continue
                self.hits += 1
                ids = array("I")
                ids.frombytes(value)
                out.append(ids)
        return out

    def put_many(self, items: Sequence[tuple[str, array]]) -> None:
        """Store new segments and move queued hits forward, in one write transaction."""
        entries = [(segment_key(piece), ids.tobytes()) for piece, ids in items]
        entries.extend(self._promote)
        self._promote.clear()
        if not entries:
            return
        try:
            self._write(entries)
        except lmdb.MapFullError:
            # Page overhead beat the estimate: start a fresh generation and try once more.
            try:
                self._write(entries, rotate=True)
            except lmdb.Error:
                self.write_failures += 1
        except lmdb.Error as exc:
            self.write_failures += 1
            log.warning("shared tokenizer cache write failed: %s", exc)

    def _write(self, entries: list[tuple[bytes, bytes]], rotate: bool = False) -> None:
        cost = sum(_entry_cost(len(value)) for _, value in entries)
        with self._env.begin(write=True) as txn:
            current = _current(txn, self._meta)
            used = _used(txn, self._meta)
            if rotate or used + cost > self._limit:
                current = 1 - current
                txn.drop(self._gens[current], delete=False)
                txn.put(_CURRENT, bytes((current,)), db=self._meta)
                used = 0
                self.rotations += 1
            db = self._gens[current]
            for key, value in entries:
                if txn.put(key, value, db=db, overwrite=False):
                    used += _entry_cost(len(value))
            txn.put(_USED, struct.pack("<Q", used), db=self._meta)

    @property
    def size(self) -> int:
        """Bytes in use in the map (both generations and LMDB's own pages)."""
        info = self._env.info()
        return (info["last_pgno"] + 1) * self._env.stat()["psize"]

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return sum(txn.stat(db)["entries"] for db in self._gens)

    def close(self) -> None:
        self._env.close()


def _current(txn: lmdb.Transaction, meta: lmdb._Database) -> int:
    value = txn.get(_CURRENT, db=meta)
    return value[0] if value else 0


def _used(txn: lmdb.Transaction, meta: lmdb._Database) -> int:
    value = txn.get(_USED, db=meta)
    return struct.unpack("<Q", value)[0] if value else 0
