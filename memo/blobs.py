"""Content-addressed blob store on a local directory (a shared volume at scale)."""

from __future__ import annotations

import os
from pathlib import Path

from memo.errors import NotFound


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic

    def get(self, digest: str) -> bytes:
        path = self._path(digest)
        if not path.exists():
            raise NotFound(f"blob {digest} is missing from {self.root}")
        return path.read_bytes()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)
