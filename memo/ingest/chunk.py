"""Cut text into overlapping word windows that end on sentence boundaries where possible."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; whitespace normalised. A paragraph break ends a sentence: a paragraph without
    final punctuation (a title, a list item) gets a full stop, so the boundary survives re-joining."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if para[-1] not in ".!?:;\"')]":
            para += "."
        out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out


def chunk_text(text: str, *, words: int, overlap: int) -> list[str]:
    """Greedy sentence packing into chunks of at most ``words`` words, repeating about ``overlap`` words
    (whole sentences) at the start of the next chunk. A single sentence longer than ``words`` is split."""
    sentences: list[list[str]] = []
    for s in split_sentences(text):
        toks = s.split()
        for i in range(0, len(toks), words):
            sentences.append(toks[i : i + words])
    chunks: list[str] = []
    cur: list[list[str]] = []
    size = 0
    for sent in sentences:
        if cur and size + len(sent) > words:
            chunks.append(" ".join(" ".join(s) for s in cur))
            keep: list[list[str]] = []
            kept = 0
            for prev in reversed(cur):
                if kept + len(prev) > overlap:
                    break
                keep.insert(0, prev)
                kept += len(prev)
            cur, size = keep, kept
        cur.append(sent)
        size += len(sent)
    if cur:
        chunks.append(" ".join(" ".join(s) for s in cur))
    return chunks
