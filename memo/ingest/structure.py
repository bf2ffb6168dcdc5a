"""The structure of a Markdown document kept through parse and chunk, and read back by the reflect stage.

A company document states most of its facts in structure: a list item ("- Bereavement: 5 days for ...") or a table
row has no subject of its own, its subject is the heading above it, and "the cap is $245" means something else under
"Port Emberly office" than under "Varnholt headquarters". So parsing keeps that structure in a small normal form
(:func:`normalise_markdown`) instead of flattening it:

- a heading is a paragraph of its own, ``#`` marks kept (``## Booking``);
- a list item is a paragraph of its own, ``- `` (bullets) or ``N. `` (ordered lists) kept;
- a table row becomes an item whose cells are labelled by their column's header, the first cell naming the row:
  ``| pH | 0 to 14 | +/- 0.02 pH |`` under ``| Parameter | Range | Accuracy |`` is ``- pH range: 0 to 14; pH
  accuracy: +/- 0.02 pH.``;
- emphasis, links (their text kept), images and code blocks go, as before.

:func:`read_sentences` reads such text back into sentences, each with its context: the headings above it (a chunk
after the first starts with the headings it sits under, see :mod:`memo.ingest.chunk`), whether it is an item, and an
item's label ("Bereavement"). :func:`plain` is the text of a paragraph without its marks, for every caller that wants
plain sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ITEM = re.compile(r"^(?:[-*+]|\d{1,3}[.)])\s+(.*)$")
_ORDERED = re.compile(r"^(\d{1,3})[.)]\s+")
_SETEXT = re.compile(r"^(=+|-+)\s*$")
_RULE = re.compile(r"^(?:(?:-\s*){3,}|(?:\*\s*){3,}|(?:_\s*){3,})$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
# a label that opens an item or a line: "Bereavement: ...", "Date of incident: ...", "P1: ...": short, no verb
# needed, not a clock time ("06:42") or a URL
LABEL = re.compile(r"^((?:[A-Z0-9]|[a-z]+[A-Z])[\w/&'().+-]*(?: [\w/&'().+-]+){0,5}):\s+(\S.*)$")
# header cells that say nothing the row's key does not ("| Setting | Value |"): the cell is labelled by the key alone
_GENERIC_HEADERS = {"value", "values", "details", "detail", "description", "notes", "note", "comment", "comments", ""}

_INLINE = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # images
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links -> their text
    (re.compile(r"(\*\*|__|\*|`)"), ""),  # emphasis, inline code (a single underscore may be part of a name)
]


def _inline(text: str) -> str:
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [_inline(c) for c in line.split("|")]


def _header_label(header: str) -> str:
    """A column header as the label of a cell: lower case unless it is an acronym or a name ("pH", "CSAT")."""
    words = header.split()
    return " ".join(
        w if (w.isupper() and len(w) > 1) or any(ch.isupper() for ch in w[1:]) else w.lower() for w in words
    )


def table_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """Each row as an item sentence whose cells are labelled by their headers, the first cell naming the row."""
    out = []
    for row in rows:
        if not any(row):
            continue
        key = row[0]
        parts = []
        for h, cell in zip(header[1:], row[1:], strict=False):
            if not cell:
                continue
            label = _header_label(h)
            if not key:
                parts.append(f"{h}: {cell}" if h else cell)
            elif label in _GENERIC_HEADERS:
                parts.append(f"{key}: {cell}")
            else:
                parts.append(f"{key} {label}: {cell}")
        if len(header) < 2 or not parts:  # a one-column table: its cells are the items
            parts = [" ".join(c for c in row if c)]
        text = "; ".join(parts)
        out.append(text if text[-1:] in ".!?" else text + ".")
    return out


def normalise_markdown(text: str) -> str:
    """Markdown in the normal form described in the module docstring: paragraphs separated by blank lines."""
    text = re.sub(r"```.*?```", "\n\n", text.replace("\r\n", "\n"), flags=re.S)  # code blocks carry no prose facts
    lines = text.split("\n")
    blocks: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            joined = _inline(" ".join(para))
            if joined:
                blocks.append(joined)
            para.clear()

    i = 0
    while i < len(lines):
        raw = lines[i]
        line = raw.strip()
        if not line:
            flush()
            i += 1
            continue
        if _SETEXT.match(line) and len(para) == 1:  # "Title\n=====": the paragraph line above is a heading
            title = _inline(para.pop())
            if title:
                blocks.append(("# " if line.startswith("=") else "## ") + title)
            i += 1
            continue
        if _RULE.match(line):  # a horizontal rule separates, states nothing
            flush()
            i += 1
            continue
        heading = HEADING.match(line)
        if heading and len(raw) - len(raw.lstrip()) <= 3:
            flush()
            title = _inline(heading.group(2))
            if title:
                blocks.append(f"{heading.group(1)} {title}")
            i += 1
            continue
        if line.startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1].strip()):
            flush()
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            blocks.extend("- " + r for r in table_rows(header, rows))
            continue
        item = ITEM.match(line)
        if item:
            flush()
            ordered = _ORDERED.match(line)
            marker = f"{ordered.group(1)}. " if ordered else "- "
            para.append(item.group(1))
            i += 1
            # the item's continuation lines (indented, not a new item, heading or table)
            while i < len(lines) and lines[i].strip() and lines[i].startswith((" ", "\t")):
                nxt = lines[i].strip()
                if ITEM.match(nxt) or HEADING.match(nxt) or nxt.startswith("|"):
                    break
                para.append(nxt)
                i += 1
            joined = _inline(" ".join(para))
            para.clear()
            if joined:
                blocks.append(marker + joined)
            continue
        para.append(line)
        i += 1
    flush()
    return "\n\n".join(blocks)


# -- reading it back ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    kind: str  # "heading", "item" or "text"
    text: str  # without its marks
    level: int = 0  # a heading's level
    number: int | None = None  # an ordered item's number


def read_block(paragraph: str) -> Block:
    p = " ".join(paragraph.split())
    heading = HEADING.match(p)
    if heading:
        return Block("heading", heading.group(2), len(heading.group(1)))
    ordered = _ORDERED.match(p)
    if ordered:
        return Block("item", p[ordered.end() :], number=int(ordered.group(1)))
    if p.startswith("- "):
        return Block("item", p[2:])
    return Block("text", p)


def paragraphs(text: str) -> list[str]:
    return [p for p in (" ".join(x.split()) for x in re.split(r"\n\s*\n", text)) if p]


def plain(paragraph: str) -> str:
    """A paragraph's text without its structural marks."""
    return read_block(paragraph).text


def is_structured(text: str) -> bool:
    """The text has sections (a heading below the title, or two headings), list items or table rows (a policy, a
    runbook), not just a title over prose (a story): its facts are asked with their headings as context."""
    blocks = [read_block(p) for p in paragraphs(text)]
    headings = [b for b in blocks if b.kind == "heading"]
    return len(headings) > 1 or any(b.kind == "item" or b.level > 1 for b in blocks)


MAX_LEAD_WORDS = 12
_TRAILING = {"a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "and", "or", "that", "which", "so",
             "any", "every", "its", "their", "is", "are", "be", "being", "from", "within"}  # fmt: skip


def short_lead(sentence: str) -> str:
    """An item's first sentence as the context of its later sentences: at most :data:`MAX_LEAD_WORDS` words, not
    ending on a function word."""
    words = sentence.rstrip(".!?:;").split()[:MAX_LEAD_WORDS]
    while len(words) > 1 and words[-1].lower().strip(",;") in _TRAILING:
        words.pop()
    return " ".join(words).rstrip(",;")


def split_label(sentence: str) -> tuple[str, str] | None:
    """("Bereavement", "5 days for ...") of a sentence that opens with a short label and a colon; None otherwise."""
    m = LABEL.match(sentence)
    if not m or re.fullmatch(r"[\d.:]+", m.group(1)) or m.group(1).lower() in ("http", "https"):
        return None
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class Sentence:
    """A sentence of a parsed text with its context."""

    text: str
    headings: tuple[str, ...]  # the headings above it, outermost first
    kind: str  # "heading", "item" or "text"
    block: int  # index of its paragraph in the text
    first: bool  # the first sentence of its paragraph
    label: str | None = None  # the label of its item or paragraph ("Bereavement"), unless it has its own
    lead: str | None = None  # an unlabelled item's first sentence, shortened (what its later sentences are about)

    @property
    def context(self) -> tuple[str, ...]:
        """What a question about this sentence names besides its own words: the headings, then the label (of every
        sentence of a labelled item or paragraph) or the lead (of a later sentence of an unlabelled item)."""
        if self.label:
            return (*self.headings, self.label)
        return self.headings + ((self.lead,) if self.lead and not self.first else ())


def read_sentences(text: str, split: object = None) -> list[Sentence]:
    """The sentences of ``text`` (in :func:`normalise_markdown`'s form, or plain) with their context. ``split`` cuts a
    paragraph into sentences (default: :func:`memo.ingest.chunk.split_paragraph`)."""
    from memo.ingest.chunk import split_paragraph

    cut = split if callable(split) else split_paragraph
    out: list[Sentence] = []
    path: list[tuple[int, str]] = []
    for n, para in enumerate(paragraphs(text)):
        b = read_block(para)
        if b.kind == "heading":
            path = [(lvl, t) for lvl, t in path if lvl < b.level] + [(b.level, b.text)]
            out.append(Sentence(b.text, tuple(t for _, t in path[:-1]), "heading", n, True))
            continue
        headings = tuple(t for _, t in path)
        sentences = cut(b.text)
        label: str | None = None
        lead: str | None = None
        if sentences:
            # a labelled item or paragraph ("- Bereavement: ...", "Drifting readings: ...") is about its label; the
            # later sentences of an unlabelled item are about its first sentence
            found = split_label(sentences[0])
            label = found[0] if found else None
            lead = short_lead(sentences[0]) if b.kind == "item" and not found else None
        for j, s in enumerate(sentences):
            own = j > 0 and split_label(s) is not None  # "Owner: ..." after "Date of incident: ...": its own label
            out.append(Sentence(s, headings, b.kind, n, j == 0, None if own else label, lead))
    return out
