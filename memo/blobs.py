"""Content-addressed blob store on a local directory (a shared volume at scale)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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


def write_dir_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name and rename it into place: a crash leaves the old one or none."""
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
