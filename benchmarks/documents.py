"""Real PDF, DOCX and HTML files built from one outline (reportlab, python-docx), with the text the parse should give.

The format tests and ``benchmarks/bench_formats.py`` build their documents here, so a document's expected text
(:func:`expected_text`: the outline as Markdown in the parse's normal form) is known exactly.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from memo.ingest.structure import normalise_markdown


@dataclass(frozen=True)
class Block:
    kind: str  # "heading", "text", "bullets", "numbered" or "table"
    text: str = ""
    level: int = 1  # a heading's level
    items: tuple[str, ...] = ()  # a list's items
    rows: tuple[tuple[str, ...], ...] = ()  # a table's rows, the header first


def heading(text: str, level: int = 1) -> Block:
    return Block("heading", text, level)


def text(paragraph: str) -> Block:
    return Block("text", paragraph)


def bullets(*items: str) -> Block:
    return Block("bullets", items=items)


def numbered(*items: str) -> Block:
    return Block("numbered", items=items)


def table(*rows: tuple[str, ...]) -> Block:
    return Block("table", rows=rows)


def policy(copies: int = 1) -> list[Block]:
    """A company policy: headings, prose, bullets, numbered steps and a table; ``copies`` sections of each kind
    (with different figures) make a longer document."""
    blocks = [heading("Zorblax Travel Policy")]
    for n in range(copies):
        office = f"Port Emberly {n + 1}" if copies > 1 else "Port Emberly"
        blocks += [
            heading(f"Booking rules for {office}", 2),
            text(
                f"Every trip to {office} is booked through the travel desk at least {14 + n} days ahead. "
                "Economy class is the default for flights shorter than six hours, and a manager approves any "
                "exception in writing before the ticket is issued."
            ),
            heading("Allowances", 3),
            bullets(
                f"Hotel cap: ${245 + n} per night in {office}.",
                f"Meals: {61 + n} euros per day, receipts required.",
                "Taxis are reimbursed only between 22:00 and 06:00.",
            ),
            heading("Claiming expenses", 3),
            numbered(
                "Collect every receipt during the trip.",
                f"Submit the claim within {30 + n} days of returning.",
                "Your manager approves the claim in the expense tool.",
            ),
            heading("Per diem by city", 3),
            table(
                ("City", "Hotel cap", "Per diem"),
                (office, f"${245 + n}", f"{91 + n} euros"),
                (f"Varnholt {n + 1}", f"${189 + n}", f"{77 + n} euros"),
            ),
            text(
                "Claims that arrive late are paid in the following month. The finance team answers questions "
                f"about this policy at extension {4417 + n}."
            ),
        ]
    return blocks


def notice() -> list[Block]:
    """A short notice: a heading, a few labelled items, a line."""
    return [
        heading("IT notice"),
        bullets("VPN gateway: vpn.zorblax.example.", "Helpdesk: extension 4417.", "Printer queue: PRN-07."),
        text("Call the helpdesk before you reinstall anything."),
    ]


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "heading":
            out.append("#" * b.level + " " + b.text)
        elif b.kind == "text":
            out.append(b.text)
        elif b.kind in ("bullets", "numbered"):
            marks = [("- " if b.kind == "bullets" else f"{i}. ") for i in range(1, len(b.items) + 1)]
            out.append("\n".join(m + item for m, item in zip(marks, b.items, strict=True)))
        else:
            header, *rows = b.rows
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out)


def expected_text(blocks: list[Block]) -> str:
    """What parsing any of the built files should give: the outline in the parse's normal form."""
    return normalise_markdown(to_markdown(blocks))


def build_html(blocks: list[Block], title: str = "Zorblax intranet", landmark: bool = True) -> bytes:
    """A page as an intranet serves it: the outline in <main> (in a plain <div> without ``landmark``), with a style
    sheet, scripts, navigation and a footer that are not the document."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if b.kind == "heading":
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif b.kind == "text":
            body.append(f"<p>{e(b.text)}</p>")
        elif b.kind in ("bullets", "numbered"):
            tag = "ul" if b.kind == "bullets" else "ol"
            body.append(f"<{tag}>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + f"</{tag}>")
        else:
            header, *rows = b.rows
            head = "<tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"
            trs = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead>{head}</thead><tbody>{trs}</tbody></table>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title>"
        "<style>body { font-family: sans-serif } .hidden-style-rule { color: red }</style>"
        "<script>var trackingCode = 'script-must-not-leak';</script></head>\n<body>"
        "<nav><a href='/'>Home</a> <a href='/hr'>HR portal</a></nav>\n"
        + ("<main>" if landmark else "<div>")
        + "\n".join(body)
        + ("</main>" if landmark else "</div>")
        + "\n<footer>Intranet footer: all rights reserved</footer>"
        "<script>document.write('script-must-not-leak');</script></body></html>"
    )
    return page.encode()


def build_docx(blocks: list[Block]) -> bytes:
    import docx

    document = docx.Document()
    for b in blocks:
        if b.kind == "heading":
            document.add_heading(b.text, b.level)
        elif b.kind == "text":
            document.add_paragraph(b.text)
        elif b.kind in ("bullets", "numbered"):
            style = "List Bullet" if b.kind == "bullets" else "List Number"
            for item in b.items:
                document.add_paragraph(item, style=style)
        else:
            grid = document.add_table(rows=len(b.rows), cols=len(b.rows[0]))
            grid.style = "Table Grid"
            for row, values in zip(grid.rows, b.rows, strict=True):
                for cell, value in zip(row.cells, values, strict=True):
                    cell.text = value
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def build_pdf(blocks: list[Block]) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import ListFlowable, ListItem, Paragraph, SimpleDocTemplate, Table, TableStyle

    styles = getSampleStyleSheet()
    e = html.escape
    story: list[object] = []
    for b in blocks:
        if b.kind == "heading":
            story.append(Paragraph(e(b.text), styles[f"Heading{b.level}"]))
        elif b.kind == "text":
            story.append(Paragraph(e(b.text), styles["BodyText"]))
        elif b.kind in ("bullets", "numbered"):
            items = [ListItem(Paragraph(e(i), styles["BodyText"])) for i in b.items]
            kind = {"bullets": {"bulletType": "bullet", "start": "\u2022"}, "numbered": {"bulletType": "1"}}[b.kind]
            story.append(ListFlowable(items, **kind))  # type: ignore[arg-type]
        else:
            grid = Table([list(r) for r in b.rows])
            grid.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.grey)]))
            story.append(grid)
    buf = io.BytesIO()
    SimpleDocTemplate(buf, pagesize=A4, title="Zorblax Travel Policy").build(story)  # type: ignore[arg-type]
    return buf.getvalue()
