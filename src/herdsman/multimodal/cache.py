"""A byte-bounded LRU of processed images keyed by content hash."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .base import ProcessedImages


def content_key(data: bytes, processor_id: str) -> str:
    # The processor id is part of the key: the same bytes give different tensors per model.
    return processor_id + ":" + hashlib.blake2b(data, digest_size=20).hexdigest()


class ProcessedImageCache:
    """Thread-safe: lookups happen on the event loop, inserts from the worker threads."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, ProcessedImages] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> ProcessedImages | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: ProcessedImages) -> None:
        size = item.nbytes
        if size > self.max_bytes:
            return
        # Callers share cached arrays; freezing them makes an accidental in-place edit an error.
        item.pixel_values.flags.writeable = False
        for v in item.model_specific.values():
            v.flags.writeable = False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = item
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
