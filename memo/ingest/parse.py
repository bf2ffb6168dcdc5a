"""Turn uploaded bytes into text. Supported: plain text, Markdown, PDF, DOCX and HTML.

A file's type is what its name says and its content confirms (magic bytes, HTML markup): a name the content
contradicts, or a type that is not supported, is refused (415). PDF, DOCX and HTML are parsed to Markdown-like text
(headings, list items, tables) and, like Markdown, brought to the normal form of :mod:`memo.ingest.structure`, so
the reflect stage reads every format's structure the same way.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import PurePath

from memo.errors import InvalidInput, MemoError, UnsupportedMediaType
from memo.ingest.archive import MAX_UNPACKED
from memo.ingest.structure import normalise_markdown

TEXT, MARKDOWN, HTML, PDF = "text/plain", "text/markdown", "text/html", "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED = {
    ".txt": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
}
KINDS = {TEXT: "plain text", MARKDOWN: "Markdown", HTML: "HTML", PDF: "a PDF", DOCX: "a Word document (DOCX)"}
# content that is none of the supported types, named in the refusal
_OTHER_MAGIC = [
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (.doc, .xls, .ppt): save it as .docx"),
    (b"{\\rtf", "an RTF file: save it as .docx"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
]
DAMAGED_ZIP = "a damaged zip archive"
_HTML_START = re.compile(rb"^(\xef\xbb\xbf)?\s*(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>])", re.I | re.S)
_TAG = re.compile(rb"<(/?[a-z][a-z0-9]*)(\s[^>]*)?/?>", re.I)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff(data: bytes) -> str | None:
    """The type the content itself shows (magic bytes, an HTML document's opening), a description of an
    unsupported one, or None for text without markers."""
    if b"%PDF-" in data[:1024]:  # the header may follow a little junk
        return PDF
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = []
        if "word/document.xml" in names:
            return DOCX
        return "a zip archive: upload the documents in it one by one" if names else DAMAGED_ZIP
    for magic, what in _OTHER_MAGIC:
        if data.startswith(magic):
            return what
    if _HTML_START.match(data[:4096]):
        return HTML
    if b"\x00" in data[:8192]:
        return "binary data"
    return None


def detect(filename: str, data: bytes) -> str:
    """The media type of an upload: its name's, when its content agrees; 415 otherwise."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED:
        raise UnsupportedMediaType(
            f"unsupported file type {suffix or '(none)'!r} for {filename!r}: upload one of {', '.join(SUPPORTED)}"
        )
    named = SUPPORTED[suffix]
    found = sniff(data)
    if found is None and named in (TEXT, MARKDOWN):
        return named
    if found is None and named == HTML and _TAG.search(data[:65536]):  # a fragment without <html>
        return named
    if found == named or (found == DAMAGED_ZIP and named == DOCX):  # a damaged DOCX: the parse says it is corrupt
        return named
    what = "text without HTML markup" if found is None else KINDS.get(found, found)
    raise UnsupportedMediaType(
        f"{filename!r} is named {suffix} but its content is {what}: upload it under its own type's name"
    )


def validate_upload(filename: str, data: bytes, max_unpacked: int) -> str:
    """Check an upload before anything is stored; returns its media type. Text must be UTF-8; PDF, DOCX and HTML
    are parsed here, so a file that cannot be (encrypted, corrupt, no text layer, a zip bomb) is refused now."""
    media_type = detect(filename, data)
    if not data.strip():
        raise InvalidInput(f"{filename!r} is empty")
    if media_type in (TEXT, MARKDOWN):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{filename!r} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from exc
        return media_type
    try:
        text = parse(data, media_type, max_unpacked=max_unpacked)
    except MemoError as exc:
        raise type(exc)(f"{filename!r}: {exc.message}") from exc
    if not text:
        raise InvalidInput(f"{filename!r} has no text to learn from")
    return media_type


def parse(data: bytes, media_type: str, *, max_unpacked: int = MAX_UNPACKED) -> str:
    """The text of an upload. Markdown, and the Markdown-like text of PDF, DOCX and HTML, keep their structure in a
    normal form (headings, list items, table rows as labelled items: :func:`memo.ingest.structure.normalise_markdown`),
    so that the reflect stage can ask a list item's or a table cell's fact with the heading it sits under.
    ``max_unpacked`` bounds what a DOCX may expand to."""
    if media_type == PDF:
        from memo.ingest.pdf import pdf_to_markdown

        text = pdf_to_markdown(data)
    elif media_type == DOCX:
        from memo.ingest.word import docx_to_markdown

        text = docx_to_markdown(data, max_unpacked)
    elif media_type == HTML:
        from memo.ingest.html_page import html_to_markdown

        text = html_to_markdown(data)
    else:
        text = data.decode("utf-8").replace("\r\n", "\n")
        if media_type == TEXT:
            return text.strip()
    return normalise_markdown(text).strip()
