"""Which parser for PDF, DOCX and HTML uploads: text quality and speed of the candidates on documents with known
text, and speed on real PDFs.

Documents: outlines of ``benchmarks/documents.py`` (a policy of 1 and of 12 sections, a short notice) built as PDF
(reportlab), DOCX (python-docx) and an intranet page with scripts, styles, navigation and a footer (the notice's
without a ``<main>`` landmark); for speed also the PDFs of Debian's ``libtasn1-doc`` and ``shared-mime-info``
packages when installed (pdfTeX output: ``apt-get install libtasn1-doc shared-mime-info``).

Figures per candidate: ``words`` (share of the outline's words found in the output, as a multiset), ``blocks``
(share of the expected normal-form paragraphs, headings with their ``#``, items with their ``-``, table rows as
labelled items, found exactly: the structure the reflect stage reads), ``leaks`` (script, style, navigation and
footer strings in the output of a page) and milliseconds per document (median of ``--repeat`` runs).

Run: ``python -m benchmarks.bench_formats [--out bench-out/formats.json]`` (needs the bench and dev extras).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from benchmarks.documents import build_docx, build_html, build_pdf, expected_text, notice, policy, to_markdown
from memo.ingest.parse import DOCX, HTML, PDF, parse
from memo.ingest.structure import normalise_markdown, paragraphs

REAL_PDFS = [
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
]
LEAKS = ["script-must-not-leak", "trackingCode", "hidden-style-rule", "HR portal", "Intranet footer"]


def _pypdf(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _pdfminer(data: bytes) -> str:
    from pdfminer.high_level import extract_text

    return str(extract_text(io.BytesIO(data)))


def _pdfium_plain(data: bytes) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(data)
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


def _trafilatura(data: bytes) -> str:
    import trafilatura

    out = trafilatura.extract(
        data.decode(), output_format="markdown", include_tables=True, include_formatting=True, favor_recall=True
    )
    return out or ""


def _bs4(parser: str) -> Callable[[bytes], str]:
    def run(data: bytes) -> str:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(data, parser)
        for tag in soup(["script", "style", "noscript", "nav", "footer", "head"]):
            tag.decompose()
        return str(soup.get_text("\n"))

    return run


CANDIDATES: dict[str, dict[str, Callable[[bytes], str]]] = {
    PDF: {
        "memo: pypdfium2 + structure": lambda d: parse(d, PDF),
        "pypdfium2 plain text": _pdfium_plain,
        "pypdf extract_text": _pypdf,
        "pdfminer.six extract_text": _pdfminer,
    },
    DOCX: {"memo: python-docx + structure": lambda d: parse(d, DOCX)},
    HTML: {
        "memo: selectolax (lexbor) + structure": lambda d: parse(d, HTML),
        "trafilatura markdown": _trafilatura,
        "beautifulsoup4 (html.parser) get_text": _bs4("html.parser"),
        "beautifulsoup4 (lxml) get_text": _bs4("lxml"),
    },
}
BUILD = {PDF: build_pdf, DOCX: build_docx, HTML: build_html}
FORMAT = {PDF: "pdf", DOCX: "docx", HTML: "html"}
PACKAGES = ["pypdfium2", "pypdf", "pdfminer.six", "python-docx", "selectolax", "trafilatura", "beautifulsoup4", "lxml"]


def _words(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text.lower()))


def _timed(fn: Callable[[bytes], str], data: bytes, repeat: int) -> tuple[str, float]:
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(data)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times) * 1000


def quality(out: str, blocks: list) -> dict[str, float]:  # type: ignore[type-arg]
    want_words = _words(to_markdown(blocks).replace("|", " ").replace("---", " "))
    got_words = _words(out)
    want_blocks = paragraphs(expected_text(blocks))
    got_blocks = set(paragraphs(normalise_markdown(out)))
    return {
        "words": sum((want_words & got_words).values()) / sum(want_words.values()),
        "blocks": sum(b in got_blocks for b in want_blocks) / len(want_blocks),
        "leaks": sum(leak in out for leak in LEAKS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/formats.json"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    documents = {"policy": policy(1), "policy x12": policy(12), "notice": notice()}
    for media_type, candidates in CANDIDATES.items():
        for label, blocks in documents.items():
            data = BUILD[media_type](blocks)
            if media_type == HTML and label == "notice":  # a page without a <main> landmark
                data = build_html(blocks, landmark=False)
            for name, fn in candidates.items():
                out, ms = _timed(fn, data, args.repeat)
                rows.append({"format": FORMAT[media_type], "document": f"{label} ({len(data) / 1024:.1f} kB)",
                             "parser": name, "ms": round(ms, 1), **quality(out, blocks)})  # fmt: skip
    for path in REAL_PDFS:
        if not path.exists():
            continue
        data = path.read_bytes()
        pages = len(__import__("pypdfium2").PdfDocument(data))
        for name, fn in CANDIDATES[PDF].items():
            _, ms = _timed(fn, data, args.repeat)
            rows.append({"format": "pdf", "document": f"{path.name} ({pages} pages)", "parser": name,
                         "ms": round(ms, 1), "ms_per_page": round(ms / pages, 2)})  # fmt: skip
    print("| format | document | parser | words | blocks | leaks | ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        shown = f"{r['ms']}" + (f" ({r['ms_per_page']}/page)" if "ms_per_page" in r else "")
        q = (
            [f"{r[k]:.3f}" if k != "leaks" else str(r[k]) for k in ("words", "blocks", "leaks")]
            if "words" in r
            else ["", "", ""]
        )
        print(f"| {r['format']} | {r['document']} | {r['parser']} | {' | '.join(q)} | {shown} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    packages = {p: version(p) for p in PACKAGES}
    args.out.write_text(json.dumps({"machine": machine, "packages": packages, "rows": rows}, indent=1))
    print(f"\npackages: {packages}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
