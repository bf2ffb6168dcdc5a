"""Turn uploaded bytes into text. Supported: plain text and Markdown."""

from __future__ import annotations

import hashlib
from pathlib import PurePath

from memo.errors import InvalidInput, UnsupportedMediaType
from memo.ingest.structure import normalise_markdown

SUPPORTED = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown"}


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_type_for(filename: str) -> str:
    """The media type of a supported file name; 415 for anything else."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED:
        raise UnsupportedMediaType(
            f"unsupported file type {suffix or '(none)'!r} for {filename!r}: upload one of {', '.join(SUPPORTED)}"
        )
    return SUPPORTED[suffix]


def validate_upload(filename: str, data: bytes) -> str:
    """Check an upload before anything is stored; returns its media type."""
    media_type = media_type_for(filename)
    if not data.strip():
        raise InvalidInput(f"{filename!r} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{filename!r} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from exc
    return media_type


def parse(data: bytes, media_type: str) -> str:
    """The text of an upload. Markdown keeps its structure in a normal form (headings, list items, table rows as
    labelled items: :func:`memo.ingest.structure.normalise_markdown`), so that the reflect stage can ask a list
    item's or a table cell's fact with the heading it sits under."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    if media_type == "text/markdown":
        text = normalise_markdown(text)
    return text.strip()
