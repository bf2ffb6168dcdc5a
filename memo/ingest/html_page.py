"""HTML to Markdown-like text with selectolax (the lexbor HTML5 parser): headings, list items, tables as Markdown
tables, paragraphs at block boundaries. Scripts, styles, forms' controls, navigation and footers are dropped before
any text is read, so none of it reaches the text."""

from __future__ import annotations

import codecs
import re

from memo.errors import InvalidInput

DROPPED = ["script", "style", "noscript", "template", "svg", "math", "canvas", "iframe", "object", "embed",
           "nav", "footer", "button", "select", "input", "textarea", "head"]  # fmt: skip
BLOCKS = {"p", "div", "section", "article", "main", "header", "aside", "blockquote", "figure", "figcaption", "pre",
          "address", "details", "summary", "dl", "dt", "dd", "form", "fieldset", "center", "hr", "body"}  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.I)


def decode_html(data: bytes) -> str:
    """The page's text: by its byte-order mark, else its declared ``<meta charset>``, else UTF-8."""
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    declared = _CHARSET.search(data[:4096])
    codec = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        return data.decode(codecs.lookup(codec).name)
    except (LookupError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the HTML is not valid {codec} text ({exc}); re-save it as UTF-8") from exc


class _Walker:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.words: list[str] = []
        self.marker = ""  # the marker of the list item being read ("- ", "3. ")

    def flush(self) -> None:
        text = " ".join(" ".join(self.words).split())
        self.words.clear()
        if text:
            self.blocks.append(self.marker + text)
            self.marker = ""

    def walk(self, node: object) -> None:
        for child in node.iter(include_text=True):  # type: ignore[attr-defined]
            tag = child.tag
            if tag == "-text":
                self.words.append(child.text_content or "")
            elif tag == "br":
                self.flush()
            elif tag in _HEADINGS:
                self.flush()
                text = " ".join(child.text(deep=True, separator=" ").split())
                if text:
                    self.blocks.append("#" * _HEADINGS[tag] + " " + text)
            elif tag in ("ul", "ol"):
                self.flush()
                self.items(child, ordered=tag == "ol")
            elif tag == "table":
                self.flush()
                self.table(child)
            elif tag in BLOCKS or tag == "li":
                self.flush()
                self.walk(child)
                self.flush()
            elif not tag.startswith("-"):  # an inline element (comments and doctypes are skipped)
                self.walk(child)

    def items(self, node: object, ordered: bool) -> None:
        number = int(node.attributes.get("start") or 1) if ordered else 1  # type: ignore[attr-defined]
        for child in node.iter():  # type: ignore[attr-defined]
            if child.tag != "li":
                self.walk(child)
                self.flush()
                continue
            self.marker = f"{number}. " if ordered else "- "
            number += 1
            self.walk(child)
            self.flush()
            self.marker = ""

    def table(self, node: object) -> None:
        rows = [r for r in node.css("tr") if _owner(r) == node]  # type: ignore[attr-defined]
        grid = [[c for c in r.iter() if c.tag in ("td", "th")] for r in rows]
        nested = any(c.css_first("p, div, ul, ol, table, h1, h2, h3, h4, h5, h6") for r in grid for c in r)
        if len(grid) < 2 or nested:  # a table for layout: its cells are read as blocks
            for r in grid:
                for c in r:
                    self.walk(c)
                    self.flush()
            return
        cells = [[" ".join(c.text(deep=True, separator=" ").replace("|", "/").split()) for c in r] for r in grid]
        cells = [r for r in cells if any(r)]
        width = max(len(r) for r in cells)
        cells = [r + [""] * (width - len(r)) for r in cells]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
        self.blocks.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]]))


def _owner(row: object) -> object:
    node = row.parent  # type: ignore[attr-defined]
    while node is not None and node.tag != "table":
        node = node.parent
    return node


def html_to_markdown(data: bytes) -> str:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(decode_html(data))
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else ""
    tree.strip_tags(DROPPED)
    walker = _Walker()
    if tree.body is not None:
        walker.walk(tree.body)
        walker.flush()
    blocks = walker.blocks
    if title and not any(b.startswith("# ") for b in blocks):  # the page's title heads a page without an <h1>
        blocks.insert(0, "# " + title)
    return "\n\n".join(blocks)
