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
from pathlib import Path

log = logging.getLogger(__name__)

# a sentence ends at . ! ? before a capital or digit, not after a title ("Mr. Fitzgibbon") or an initial ("J. Smith")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bJr\.)(?<!\bSr\.)(?<!\bProf\.)"
    r"(?<!\bRev\.)(?<!\bGen\.)(?<!\bCol\.)(?<!\bCapt\.)(?<!\bLt\.)(?<!\bvs\.)(?<!\b[A-Z]\.)\s+(?=[\"'(\[]?[A-Z0-9])"
)

Counter = Callable[[str], int]  # text -> its size (words or tokens)


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


def _pack(text: str, size: int, overlap: int, count: Counter) -> list[str]:
    """Greedy sentence packing into chunks of at most ``size`` (by ``count``), repeating about ``overlap``
    (whole sentences) at the start of the next chunk. A single sentence longer than ``size`` is split."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
    pieces: list[tuple[str, int]] = []
    for s in split_sentences(text):
        n = count(s)
        if n <= size:
            pieces.append((s, n))
        else:
            for part in _split_long(s.split(), size, count):
                p = " ".join(part)
                pieces.append((p, count(p)))
    chunks: list[str] = []
    cur: list[tuple[str, int]] = []
    used = 0
    for piece in pieces:
        if cur and used + piece[1] > size:
            chunks.append(" ".join(p for p, _ in cur))
            keep: list[tuple[str, int]] = []
            kept = 0
            for prev in reversed(cur):
                if kept + prev[1] > overlap:
                    break
                keep.insert(0, prev)
                kept += prev[1]
            cur, used = keep, kept
        cur.append(piece)
        used += piece[1]
    if cur:
        chunks.append(" ".join(p for p, _ in cur))
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
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)

            def count(text: str) -> int:
                return len(tok(text, add_special_tokens=False)["input_ids"])

            return count
        except Exception as exc:  # no tokenizer there: estimate rather than fail the job
            log.warning("no tokenizer at %s (%s); approximating token counts", tokenizer_path, exc)
    else:
        log.warning("no tokenizer directory %s; approximating token counts", tokenizer_path)
    return approx_tokens


def chunk_tokens(text: str, *, tokens: int, overlap: int, count: Counter = approx_tokens) -> list[str]:
    """Chunks of at most ``tokens`` tokens (by ``count``, e.g. ``token_counter(model_dir)``), repeating about
    ``overlap`` tokens (whole sentences) at the start of the next chunk."""
    return _pack(text, tokens, overlap, count)
