"""Content-addressed blob store on a local directory (a shared volume at scale), and atomic directory writes.

Every durable file is written under a temporary name (``*.tmp``, ``*.partial``), flushed to disk and renamed into
place: a crash leaves the old file or none, plus a leftover that ``memo doctor`` removes (memo.doctor).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from memo.errors import NotFound

TMP_SUFFIX, PARTIAL_SUFFIX = ".tmp", ".partial"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> bool:
        """Store ``data`` under ``digest``; False when it was there already."""
        path = self.path(digest)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, data)
        return True

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        if not path.exists():
            raise NotFound(f"blob {digest} is missing from {self.root}")
        return path.read_bytes()

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a uniquely named temporary file beside it (concurrent writers never share one),
    flushed to disk before the rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name, flush its files and rename it into place: a crash leaves the old
    one or none (and a ``*.partial`` leftover)."""
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    _fsync_dir(path.parent)
