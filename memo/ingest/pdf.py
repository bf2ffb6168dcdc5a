"""PDF to Markdown-like text with PDFium (pypdfium2): headings from font sizes, list items from bullets and numbers,
table rows from cells on one line (measured against pypdf and pdfminer.six: results/ingest).

PDFium gives each page's text as runs (one per stretch of text in one font on a line) with their boxes and font
sizes. Runs on one baseline make a line; a line in a font clearly larger than the body's is a heading (the largest
size is ``#``); a line opening with a bullet or a number is an item; a line of runs set apart by wide gaps is a table
row, and consecutive rows become a Markdown table. Other lines make paragraphs, split where the spacing grows.
Page numbers and running headers or footers (a line on most pages) are dropped.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field

from memo.errors import InvalidInput

_LOCK = threading.Lock()  # PDFium is not thread-safe: one document at a time per process
BULLETS = "•●◦▪■□–—-*·‣⁃○"
_NUMBER = re.compile(r"^\(?(\d{1,3})[.)]?$")
_NUMBERED_LINE = re.compile(r"^(\d{1,3})[.)]\s+(\S.*)$")
_PAGE_NUMBER = re.compile(r"^(page\s+)?\d+(\s*(of|/)\s*\d+)?$", re.I)


@dataclass
class Line:
    runs: list[tuple[float, float, str]]  # (left, right, text) of each run, left to right
    top: float
    bottom: float
    size: float  # the largest font size of its text runs
    page: int
    cells: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(t for _, _, t in self.runs)


def _open(data: bytes) -> object:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise InvalidInput("the PDF is encrypted with a password: upload a copy without one") from exc
        raise InvalidInput(f"the PDF cannot be read (corrupt or not a PDF): {exc}") from exc


def _page_lines(textpage: object, page: int) -> list[Line]:
    import pypdfium2.raw as raw

    runs: list[tuple[float, float, float, float, float, str]] = []
    for i in range(textpage.count_rects()):  # type: ignore[attr-defined]
        left, bottom, right, top = textpage.get_rect(i)  # type: ignore[attr-defined]
        text = " ".join(textpage.get_text_bounded(left, bottom, right, top).split())  # type: ignore[attr-defined]
        if not text:
            continue
        index = textpage.get_index(left + 0.5, (bottom + top) / 2, 1.0, 1.0)  # type: ignore[attr-defined]
        size = raw.FPDFText_GetFontSize(textpage, index) if index is not None and index >= 0 else top - bottom
        runs.append((left, right, bottom, top, float(size), text))
    lines: list[Line] = []
    for left, right, bottom, top, size, text in runs:  # content order: a run joins the line it shares a baseline with
        mid = (bottom + top) / 2
        line = next((ln for ln in reversed(lines[-3:]) if ln.bottom <= mid <= ln.top), None)
        if line is None:
            lines.append(Line([(left, right, text)], top, bottom, 0.0, page))
            line = lines[-1]
        else:
            line.runs.append((left, right, text))
            line.top, line.bottom = max(line.top, top), min(line.bottom, bottom)
        if text not in BULLETS and not _NUMBER.match(text):
            line.size = max(line.size, round(size, 1))
    for line in lines:
        line.runs.sort()
        line.size = line.size or round(line.top - line.bottom, 1)
        line.cells = _cells(line)
    return lines


def _cells(line: Line) -> list[str]:
    """The line's runs grouped into cells: a gap wider than the font size between two runs starts a new cell."""
    cells: list[list[str]] = []
    prev_right = None
    for left, right, text in line.runs:
        if prev_right is None or left - prev_right > max(line.size, 4.0):
            cells.append([])
        cells[-1].append(text)
        prev_right = right
    return [" ".join(c) for c in cells]


def _place(line: Line) -> tuple[str, int]:
    return re.sub(r"^\d+\s+|\s+\d+$", "#", line.text), round(line.top / 6)  # a page number at either end aside


def _drop_page_furniture(lines: list[Line], pages: int) -> list[Line]:
    """The lines without page numbers and running headers or footers: a line among the first or last two of its
    page whose text (digits aside) is so placed on most pages (of three or more)."""
    edges: list[list[Line]] = []
    for p in range(pages):
        on_page = [ln for ln in lines if ln.page == p]
        edges.append(on_page[:2] + on_page[-2:])
    counts = Counter(k for edge in edges for k in {_place(ln) for ln in edge})
    running = {k for k, n in counts.items() if n > pages / 2} if pages >= 3 else set()
    furniture = {id(ln) for edge in edges for ln in edge if _place(ln) in running}
    return [ln for ln in lines if id(ln) not in furniture and not _PAGE_NUMBER.match(ln.text)]


def _item(line: Line) -> tuple[str, str] | None:
    """(marker, text) of a line that opens a list item."""
    first = line.runs[0][2]
    rest = " ".join(t for _, _, t in line.runs[1:])
    if first[:1] in BULLETS and (len(first) == 1 or first[1] == " "):
        return "- ", (first[1:] + " " + rest).strip()
    number = _NUMBER.match(first)
    if number and rest:
        return f"{number.group(1)}. ", rest
    numbered = _NUMBERED_LINE.match(line.text)
    if numbered:
        return f"{numbered.group(1)}. ", numbered.group(2)
    return None


def _join(text: str, more: str) -> str:
    if text.endswith("-") and text[-2:-1].isalpha() and more[:1].islower():  # a hyphenated word across lines
        return text[:-1] + more
    return f"{text} {more}"


def _markdown(lines: list[Line]) -> str:
    body: Counter[float] = Counter()
    for ln in lines:
        body[ln.size] += len(ln.text)
    body_size = body.most_common(1)[0][0]
    heading_sizes = sorted({ln.size for ln in lines if ln.size >= body_size * 1.15}, reverse=True)
    blocks: list[str] = []
    rows: list[list[str]] = []
    para: list[str] = []  # the block being built: its first element is the marker ("", "- ", "1. ")
    prev: Line | None = None

    def flush() -> None:
        if para:
            blocks.append(para[0] + para[1])
            para.clear()

    def flush_rows() -> None:
        if len(rows) > 1:
            width = max(len(r) for r in rows)
            cell = [[c.replace("|", "/") for c in r] + [""] * (width - len(r)) for r in rows]
            blocks.append("\n".join(["| " + " | ".join(cell[0]) + " |", "|" + "---|" * width]
                                    + ["| " + " | ".join(r) + " |" for r in cell[1:]]))  # fmt: skip
        elif rows:
            blocks.append(" | ".join(rows[0]))
        rows.clear()

    for ln in lines:
        item = _item(ln)
        if len(ln.cells) > 1 and item is None:
            flush()
            rows.append(ln.cells)
            prev = ln
            continue
        flush_rows()
        if ln.size in heading_sizes and len(ln.text.split()) <= 20:
            level = min(heading_sizes.index(ln.size) + 1, 6)
            if (
                prev is not None
                and blocks
                and blocks[-1].startswith("#" * level + " ")
                and not para
                and (prev.bottom - ln.top < ln.size and prev.size == ln.size and prev.page == ln.page)
            ):  # a heading set on two lines
                blocks[-1] += " " + ln.text
            else:
                flush()
                blocks.append("#" * level + " " + ln.text)
        elif item is not None:
            flush()
            para[:] = [item[0], item[1]]
        else:
            gap = (prev.bottom - ln.top) if prev is not None and prev.page == ln.page else 0.0
            continues = (
                para
                and prev is not None
                and (
                    (prev.page == ln.page and gap < 0.8 * ln.size and abs(prev.size - ln.size) < 0.5)
                    or (prev.page != ln.page and para[1][-1:] not in ".!?:" and ln.text[:1].islower())
                )
            )
            if continues:
                para[1] = _join(para[1], ln.text)
            else:
                flush()
                para[:] = ["", ln.text]
        prev = ln
    flush()
    flush_rows()
    return "\n\n".join(blocks)


def pdf_to_markdown(data: bytes) -> str:
    """The text of a PDF as Markdown. An encrypted PDF, a corrupt one, or one without a text layer (a scan, images
    only) raises :class:`InvalidInput` saying so."""
    with _LOCK:
        doc = _open(data)
        try:
            lines: list[Line] = []
            pages = len(doc)  # type: ignore[arg-type]
            for p in range(pages):
                page = doc[p]  # type: ignore[index]
                textpage = page.get_textpage()
                try:
                    lines += _page_lines(textpage, p)
                finally:
                    textpage.close()
                    page.close()
        finally:
            doc.close()  # type: ignore[attr-defined]
    lines = _drop_page_furniture(lines, pages)
    if not lines:
        raise InvalidInput("the PDF has no text layer (a scan or images only): run OCR on it first, or upload its text")
    return _markdown(lines)
