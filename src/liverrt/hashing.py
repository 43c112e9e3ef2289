"""sha256 of files and bytes: how artifacts name the exact files they were made from."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (a plan in memory, an engine-cache key's text)."""
    return hashlib.sha256(data).hexdigest()
