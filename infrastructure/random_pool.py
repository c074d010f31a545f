"""Unguessable random bytes, fetched from the kernel in blocks.

Every PUBLISH needs fresh randomness twice (the entity-tag's secret, the response's
To-tag). One `secrets.token_bytes` call each showed up in profiles; drawing 4 KiB at a
time from the same CSPRNG and handing out disjoint slices costs one call per few hundred
uses and keeps every value as unpredictable as before (no byte is handed out twice).
"""

from __future__ import annotations

import secrets
import threading


class RandomPool:
    """Disjoint slices of CSPRNG output; safe to share between threads."""

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._pool = b""
        self._offset = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bytes:
        with self._lock:
            offset = self._offset
            if offset + size > len(self._pool):
                self._pool, offset = secrets.token_bytes(max(self._block, size)), 0
            self._offset = offset + size
            return self._pool[offset:offset + size]
