"""DOCX to Markdown-like text with python-docx: headings by their styles (``Title``, ``Heading N``), list paragraphs
as items (``List Number`` numbered), tables as Markdown tables, in document order. Headers, footers, comments and
footnotes are not the document's text and are left out."""

from __future__ import annotations

import io

from memo.errors import InvalidInput
from memo.ingest.archive import open_zip


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "/").split())


def docx_to_markdown(data: bytes, max_unpacked: int) -> str:
    import docx
    from docx.table import Table

    open_zip(data, max_unpacked, "the DOCX").close()  # bounded decompression before python-docx reads it
    try:
        document = docx.Document(io.BytesIO(data))
        content = list(document.iter_inner_content())
    except Exception as exc:  # python-docx and lxml raise many kinds on a damaged package
        raise InvalidInput(f"the DOCX cannot be read (corrupt or not a Word document): {exc}") from exc
    blocks: list[str] = []
    number = 0  # the running number of a numbered list
    for part in content:
        if isinstance(part, Table):
            number = 0
            rows = []
            for row in part.rows:
                cells, seen = [], set()
                for cell in row.cells:  # a merged cell is repeated for each grid column it spans
                    if id(cell._tc) not in seen:
                        seen.add(id(cell._tc))
                        cells.append(_cell(cell.text))
                if any(cells):
                    rows.append(cells)
            if len(rows) == 1 or (rows and len(rows[0]) == 1):  # not a grid of values: its cells are paragraphs
                blocks += [c for r in rows for c in r if c]
            elif rows:
                width = max(len(r) for r in rows)
                rows = [r + [""] * (width - len(r)) for r in rows]
                lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
                blocks.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]))
            continue
        text = " ".join(part.text.split())
        style = part.style.name if part.style is not None else ""
        numbered = style.startswith("List Number")
        number = number + 1 if numbered else 0
        if not text:
            continue
        if style == "Title":
            blocks.append("# " + text)
        elif style.startswith("Heading ") and style[8:].isdigit():
            blocks.append("#" * min(int(style[8:]), 6) + " " + text)
        elif numbered:
            blocks.append(f"{number}. {text}")
        elif style.startswith("List") or (part._p.pPr is not None and part._p.pPr.numPr is not None):
            blocks.append("- " + text)
        else:
            blocks.append(text)
    return "\n\n".join(blocks)
