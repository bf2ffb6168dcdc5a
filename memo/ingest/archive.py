"""Zip files read with bounded decompression: a DOCX is a zip, and ``memo ingest`` takes a zip of documents."""

from __future__ import annotations

import io
import zipfile

from memo.errors import InvalidInput, PayloadTooLarge

MAX_MEMBERS = 10_000
MAX_UNPACKED = 100 * 1024 * 1024  # the default of MEMO_MAX_UNPACKED_BYTES


def open_zip(data: bytes, limit: int, what: str = "the zip") -> zipfile.ZipFile:
    """Open a zip after checking what it expands to, so a zip bomb is refused (413) before anything parses it: the
    sizes its directory declares, in all at most ``limit``; then the actual bytes, every member inflated in pieces
    (zipfile stops at a member's declared size and checks its CRC, so a member that lies about its size is refused
    as corrupt). A damaged zip is refused as corrupt (422)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise PayloadTooLarge(f"{what} has {len(members)} members; the limit is {MAX_MEMBERS}")
        declared = sum(m.file_size for m in members)
        if declared > limit:
            raise PayloadTooLarge(f"{what} expands to {declared} bytes; the limit is {limit} (MEMO_MAX_UNPACKED_BYTES)")
        for m in members:
            with archive.open(m) as f:
                while f.read(1 << 16):
                    pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise InvalidInput(f"{what} is corrupt: {exc}") from exc
    return archive
