"""Turn uploaded bytes into text. Supported: plain text and Markdown."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath

from memo.errors import InvalidInput, UnsupportedMediaType

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


_MD_NOISE = [
    (re.compile(r"```.*?```", re.S), " "),  # code blocks carry no prose facts
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # images
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links -> their text
    (re.compile(r"^\s{0,3}#{1,6}\s*(.*)$", re.M), r"\n\1\n"),  # headings: own paragraph, no marks
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$", re.M), r"\n\1\n"),  # list items: one paragraph each
    (re.compile(r"[*_`]{1,3}"), ""),  # emphasis, inline code
]


def parse(data: bytes, media_type: str) -> str:
    text = data.decode("utf-8")
    if media_type == "text/markdown":
        for pattern, repl in _MD_NOISE:
            text = pattern.sub(repl, text)
    return text.replace("\r\n", "\n").strip()
