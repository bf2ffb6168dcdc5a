"""Deduplication of a collection's reflections: exact (hash of the normalised question) and near-duplicate
(MinHash LSH on word shingles of the normalised question, with the maintained ``datasketch`` library)."""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from memo.questions import normalise_question, question_hash

NUM_PERM = 128


def shingles(question: str) -> set[str]:
    """Words and word pairs of the normalised question (pairs keep order: 'a b' differs from 'b a')."""
    words = normalise_question(question).split()
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}


def minhash(question: str) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    for s in sorted(shingles(question)):
        m.update(s.encode())
    return m


class Deduplicator:
    """Remembers the questions of a collection; :meth:`check` says whether a new one is new, an exact duplicate or a
    near duplicate (estimated Jaccard of shingles >= ``threshold``, confirmed on the exact shingle sets)."""

    def __init__(self, threshold: float = 0.85) -> None:
        self.threshold = threshold
        self._hashes: set[str] = set()
        self._shingles: dict[str, set[str]] = {}
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM) if threshold < 1 else None

    def check(self, question: str) -> str:
        """'new', 'exact' or 'near'."""
        h = question_hash(question)
        if h in self._hashes:
            return "exact"
        if self._lsh is not None:
            sh = shingles(question)
            for key in self._lsh.query(minhash(question)):
                other = self._shingles[key]
                if len(sh & other) / max(1, len(sh | other)) >= self.threshold:
                    return "near"
        return "new"

    def add(self, question: str) -> None:
        h = question_hash(question)
        if h in self._hashes:
            return
        self._hashes.add(h)
        if self._lsh is not None:
            self._shingles[h] = shingles(question)
            self._lsh.insert(h, minhash(question))
