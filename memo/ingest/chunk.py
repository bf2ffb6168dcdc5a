"""Cut text into overlapping windows that end on sentence boundaries where possible.

Two measures of size: words (:func:`chunk_text`, kept for callers that count words, e.g. the evaluation harness)
and tokens of the generator's tokenizer (:func:`chunk_tokens`; :func:`token_counter` builds the counter, falling back
to a cheap approximation when no tokenizer can be loaded). Both share one packing routine.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memo.ingest.structure import paragraphs, plain, read_block

log = logging.getLogger(__name__)

# a sentence ends at . ! ? before a capital or digit, not after a title ("Mr. Fitzgibbon") or an initial ("J. Smith")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bJr\.)(?<!\bSr\.)(?<!\bProf\.)"
    r"(?<!\bRev\.)(?<!\bGen\.)(?<!\bCol\.)(?<!\bCapt\.)(?<!\bLt\.)(?<!\bvs\.)(?<!\b[A-Z]\.)\s+(?=[\"'(\[]?[A-Z0-9])"
)

Counter = Callable[[str], int]  # text -> its size (words or tokens)


def split_paragraph(para: str) -> list[str]:
    """Sentences of one paragraph, whitespace normalised; without final punctuation (a title, a list item) it gets a
    full stop, so the boundary survives re-joining."""
    para = " ".join(para.split())
    if not para:
        return []
    if para[-1] not in ".!?:;\"')]":
        para += "."
    return [s.strip() for s in _SENTENCE_END.split(para) if s.strip()]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, without the structural marks of parsed Markdown (``#``, ``- ``, ``1. ``,
    :mod:`memo.ingest.structure`). A paragraph break ends a sentence."""
    return [s for para in paragraphs(text) for s in split_paragraph(plain(para))]


def _split_long(words: list[str], size: int, count: Counter) -> list[list[str]]:
    """Word windows of at most ``size`` by ``count`` summed word by word (linear in the sentence; a word is counted
    with its leading space, as a tokenizer sees it mid-sentence). Each window holds at least one word."""
    out: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for w in words:
        n = max(1, count(" " + w))
        if cur and used + n > size:
            out.append(cur)
            cur, used = [], 0
        cur.append(w)
        used += n
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class _Piece:
    text: str  # a sentence (or a part of an overlong one), the first of its paragraph with the paragraph's mark
    size: int
    para: int  # its paragraph
    headings: tuple[str, ...]  # the heading lines in force before it (``## Booking``), outermost first


def _pieces(text: str, size: int, count: Counter) -> list[_Piece]:
    out: list[_Piece] = []
    path: list[tuple[int, str]] = []
    for n, para in enumerate(paragraphs(text)):
        block = read_block(para)
        if block.kind == "heading":
            path = [(lvl, h) for lvl, h in path if lvl < block.level]
            out.append(_Piece(para, count(para), n, tuple(h for _, h in path)))
            path.append((block.level, para))
            continue
        mark = para[: len(para) - len(block.text)]
        headings = tuple(h for _, h in path)
        for j, s in enumerate(split_paragraph(block.text)):
            s = mark + s if j == 0 else s
            if count(s) <= size:
                out.append(_Piece(s, count(s), n, headings))
            else:
                for part in _split_long(s.split(), size, count):
                    p = " ".join(part)
                    out.append(_Piece(p, count(p), n, headings))
    return out


def _join(pieces: list[_Piece]) -> str:
    """Pieces as text: sentences of one paragraph joined by a space, paragraphs by a blank line."""
    out = ""
    for i, p in enumerate(pieces):
        out += ("" if i == 0 else " " if p.para == pieces[i - 1].para else "\n\n") + p.text
    return out


def _pack(text: str, size: int, overlap: int, count: Counter) -> list[str]:
    """Greedy sentence packing into chunks of at most ``size`` (by ``count``), repeating about ``overlap``
    (whole sentences) at the start of the next chunk. A single sentence longer than ``size`` is split. A chunk of a
    text with headings opens with the headings it sits under (its first sentence's), so that every chunk says what
    it is about."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
    pieces = _pieces(text, size, count)

    def crumbs(first: _Piece) -> list[_Piece]:
        return [_Piece(h, count(h), -1 - k, ()) for k, h in enumerate(first.headings)]

    def fits(crumb: list[_Piece], body: list[_Piece]) -> bool:
        # the sum of the pieces first (cheap), then the joined text itself (separators and merges at the joins)
        return sum(p.size for p in crumb + body) <= size and count(_join(crumb + body)) <= size

    chunks: list[str] = []
    cur: list[_Piece] = []
    crumb: list[_Piece] = []
    for piece in pieces:
        if cur and not fits(crumb, cur + [piece]):
            chunks.append(_join(crumb + cur))
            keep: list[_Piece] = []
            kept = 0
            for prev in reversed(cur):
                if kept + prev.size > overlap:
                    break
                keep.insert(0, prev)
                kept += prev.size
            # the headings of the new chunk's first sentence; overlap is dropped (from the front) if they do not fit
            while True:
                crumb = crumbs(keep[0] if keep else piece)
                if fits(crumb, keep + [piece]) or not keep:
                    break
                keep.pop(0)
            if not fits(crumb, keep + [piece]):
                crumb = []
            cur = keep
        cur.append(piece)
    if cur:
        chunks.append(_join(crumb + cur))
    return chunks


def count_words(text: str) -> int:
    return len(text.split())


def chunk_text(text: str, *, words: int, overlap: int) -> list[str]:
    """Chunks of at most ``words`` words, repeating about ``overlap`` words (whole sentences) at the start of
    the next chunk. A single sentence longer than ``words`` is split."""
    return _pack(text, words, overlap, count_words)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate: ~4 characters or ~0.75 words per token, whichever is larger."""
    return max(math.ceil(len(text) / 4), math.ceil(len(text.split()) * 4 / 3)) if text.strip() else 0


_counter_lock = threading.Lock()


def token_counter(tokenizer_path: str | None) -> Counter:
    """Count tokens with the Hugging Face tokenizer at ``tokenizer_path`` (a local directory; nothing is downloaded),
    or with :func:`approx_tokens` when it is unset or cannot be loaded. Thread-safe: documents of a batch are chunked
    on several threads, and transformers' lazy import fails in all but one of them when they race."""
    with _counter_lock:
        return _load_counter(tokenizer_path)


@functools.lru_cache(maxsize=8)
def _load_counter(tokenizer_path: str | None) -> Counter:
    if tokenizer_path and Path(tokenizer_path).is_dir():
        try:
            encode = _encoder(Path(tokenizer_path))

            def count(text: str) -> int:
                return len(encode(text))

            return count
        except Exception as exc:  # no tokenizer there: estimate rather than fail the job
            log.warning("no tokenizer at %s (%s); approximating token counts", tokenizer_path, exc)
    else:
        log.warning("no tokenizer directory %s; approximating token counts", tokenizer_path)
    return approx_tokens


def _encoder(path: Path) -> Callable[[str], list[int]]:
    """A text's token ids, without special tokens. A fast tokenizer's ``tokenizer.json`` is read by the ``tokenizers``
    library alone, without importing torch (the gateway counts a chat answer's usage with it; for the packaged model
    the ids are transformers' own); a tokenizer without one (sentencepiece only) is loaded by transformers."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lambda text: list(hf(text, add_special_tokens=False)["input_ids"])


def chunk_tokens(text: str, *, tokens: int, overlap: int, count: Counter = approx_tokens) -> list[str]:
    """Chunks of at most ``tokens`` tokens (by ``count``, e.g. ``token_counter(model_dir)``), repeating about
    ``overlap`` tokens (whole sentences) at the start of the next chunk."""
    return _pack(text, tokens, overlap, count)
