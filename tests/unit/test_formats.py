"""PDF, DOCX and HTML parsing on real files built here (reportlab, python-docx), type detection by content, and the
committed bad inputs (tests/fixtures/formats, rebuilt by its make.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from benchmarks.documents import build_docx, build_html, build_pdf, bullets, expected_text, heading, policy, text
from memo.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from memo.ingest.archive import MAX_UNPACKED
from memo.ingest.parse import DOCX, HTML, PDF, detect, parse, validate_upload
from memo.ingest.structure import read_sentences

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
BUILDERS = {PDF: build_pdf, DOCX: build_docx, HTML: build_html}


@pytest.mark.parametrize("media_type", [PDF, DOCX, HTML])
def test_every_format_keeps_headings_lists_and_tables(media_type):
    blocks = policy(copies=3)  # several pages as a PDF
    data = BUILDERS[media_type](blocks)
    got = parse(data, media_type)
    assert got == expected_text(blocks)
    # the reflect stage reads a table row's fact with the headings above it
    row = next(s for s in read_sentences(got) if s.text.startswith("Varnholt 2 hotel cap"))
    assert row.kind == "item" and row.headings == ("Zorblax Travel Policy", "Booking rules for Port Emberly 2",
                                                   "Per diem by city")  # fmt: skip


def test_pdf_page_numbers_and_running_headers_are_dropped():
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    def furniture(canvas: object, doc: object) -> None:
        canvas.drawString(72, 800, "Zorblax confidential")  # type: ignore[attr-defined]
        canvas.drawString(290, 30, str(doc.page))  # type: ignore[attr-defined]

    styles = getSampleStyleSheet()
    story = [Paragraph(f"Fact {i}: the locker code of room {i} is {1000 + i}.", styles["BodyText"]) for i in range(150)]
    buf = io.BytesIO()
    SimpleDocTemplate(buf).build(story, onFirstPage=furniture, onLaterPages=furniture)
    got = parse(buf.getvalue(), PDF).split("\n\n")
    assert got == [f"Fact {i}: the locker code of room {i} is {1000 + i}." for i in range(150)]


def test_html_drops_scripts_styles_and_page_chrome():
    page = build_html([heading("VPN"), text("The VPN gateway is vpn.zorblax.example."), bullets("Port 443.")])
    got = parse(page, HTML)
    assert got == "# VPN\n\nThe VPN gateway is vpn.zorblax.example.\n\n- Port 443."
    for leak in ("script-must-not-leak", "trackingCode", "hidden-style-rule", "HR portal", "Intranet footer"):
        assert leak not in got


def test_html_title_heads_a_page_without_h1_and_its_charset_is_read():
    page = (
        "<html><head><meta charset='windows-1252'><title>Caf\xe9 rules</title></head><body>"
        "<div>Opening hours: 8 to 17.<br>Price of a coffee: 2 \u20ac.</div>"
        "<table><tr><td><p>A layout cell.</p></td><td>Another cell.</td></tr></table></body></html>"
    ).encode("cp1252")
    assert parse(page, HTML).split("\n\n") == [
        "# Café rules",
        "Opening hours: 8 to 17.",
        "Price of a coffee: 2 €.",
        "A layout cell.",
        "Another cell.",
    ]


@pytest.mark.parametrize(
    ("name", "data", "found"),
    [
        ("report.docx", build_pdf([text("A fact.")]), "a PDF"),
        ("report.pdf", build_docx([text("A fact.")]), "a Word document"),
        ("notes.txt", build_pdf([text("A fact.")]), "a PDF"),
        ("notes.md", b"<!DOCTYPE html><html><body>A fact.</body></html>", "HTML"),
        ("page.html", b"Just a sentence, no markup.", "text without HTML markup"),
        ("old.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, "a legacy Office file"),
        ("photo.pdf", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "a PNG image"),
    ],
)
def test_a_name_its_content_contradicts_is_refused(name, data, found):
    with pytest.raises(UnsupportedMediaType, match=f"named .* but its content is {found}"):
        detect(name, data)


def test_a_zip_that_is_not_a_docx_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(UnsupportedMediaType, match="a zip archive"):
        detect("bundle.docx", buf.getvalue())


def test_content_confirms_the_name():
    assert detect("A.PDF", b"\n%PDF-1.7 ...") == PDF
    assert detect("page.htm", b"<p>A fragment.</p>") == HTML
    assert detect("page.html", b"\xef\xbb\xbf <!-- saved --> <!doctype html><p>x</p>") == HTML
    assert detect("notes.md", b"# Notes\n\nSome <b>inline</b> HTML is Markdown.") == "text/markdown"


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("encrypted.pdf", InvalidInput, "encrypted with a password"),
        ("image-only.pdf", InvalidInput, "no text layer"),
        ("corrupt.docx", InvalidInput, "cannot be read"),
        ("bomb.docx", PayloadTooLarge, "expands to 2000868 bytes; the limit is 1000000"),
        ("bomb-lying.docx", InvalidInput, "corrupt: Bad CRC-32"),
    ],
)
def test_bad_files_are_refused_saying_why(name, error, message):
    data = (FIXTURES / name).read_bytes()
    with pytest.raises(error, match=message) as info:
        validate_upload(name, data, max_unpacked=1_000_000)
    assert info.value.message.startswith(f"{name!r}: ")


def test_corrupt_and_empty_files_are_refused():
    pdf = build_pdf(policy())
    with pytest.raises(InvalidInput, match="cannot be read"):
        validate_upload("cut.pdf", pdf[:20], MAX_UNPACKED)
    with pytest.raises(InvalidInput, match="corrupt"):
        validate_upload("cut.docx", build_docx(policy())[:5000], MAX_UNPACKED)
    with pytest.raises(InvalidInput, match="no text to learn from"):
        validate_upload("empty.html", b"<html><body><script>x()</script></body></html>", MAX_UNPACKED)
    assert validate_upload("policy.pdf", pdf, MAX_UNPACKED) == PDF
