"""Deduplication of a collection's reflections: exact (hash of the normalised question) and near-duplicate
(MinHash LSH on word shingles of the normalised question, with the maintained ``datasketch`` library)."""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

from memo.questions import normalise_question, question_hash, split_context

NUM_PERM = 128


def shingles(question: str) -> set[str]:
    """Words and word pairs of the normalised question without its context (pairs keep order: 'a b' differs from
    'b a'). A long shared context ("Acme - Travel Policy > Hotels > ...") would make any two short questions of a
    section near duplicates; the context is compared whole instead (:meth:`Deduplicator.check`)."""
    words = normalise_question(split_context(question)[1]).split()
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}


_MARK = re.compile(r"\b\w*\d[\w.,:/-]*|(?<=\s)[A-Z][\w'-]*")


def marks(question: str) -> frozenset[str]:
    """What tells two look-alike questions apart though their other words are the same: numbers, codes and names
    (capitalised words after the first): "What is the first response for P1 Premium customers?" and "... for P2
    Premium customers?", "the cap in Port Emberly" and "the cap in Varnholt"."""
    return frozenset(m.group(0).rstrip(".,:?").lower() for m in _MARK.finditer(question))


def minhash(question: str) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    for s in sorted(shingles(question)):
        m.update(s.encode())
    return m


class Deduplicator:
    """Remembers the questions of a collection; :meth:`check` says whether a new one is new, an exact duplicate or a
    near duplicate (estimated Jaccard of shingles >= ``threshold``, confirmed on the exact shingle sets, with the same
    context and the same numbers and names: :func:`marks`; a question about a look-alike fact is not a
    duplicate)."""

    def __init__(self, threshold: float = 0.85) -> None:
        self.threshold = threshold
        self._hashes: set[str] = set()
        self._shingles: dict[str, set[str]] = {}
        self._marks: dict[str, tuple[str, frozenset[str]]] = {}  # (normalised context, marks)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM) if threshold < 1 else None

    @staticmethod
    def _key(question: str) -> tuple[str, frozenset[str]]:
        return normalise_question(split_context(question)[0]), marks(question)

    def check(self, question: str) -> str:
        """'new', 'exact' or 'near'."""
        h = question_hash(question)
        if h in self._hashes:
            return "exact"
        if self._lsh is not None:
            sh, mk = shingles(question), self._key(question)
            for key in self._lsh.query(minhash(question)):
                other = self._shingles[key]
                if len(sh & other) / max(1, len(sh | other)) >= self.threshold and self._marks[key] == mk:
                    return "near"
        return "new"

    def add(self, question: str) -> None:
        h = question_hash(question)
        if h in self._hashes:
            return
        self._hashes.add(h)
        if self._lsh is not None:
            self._shingles[h] = shingles(question)
            self._marks[h] = self._key(question)
            self._lsh.insert(h, minhash(question))
