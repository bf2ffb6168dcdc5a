"""Benchmark folders (``documents.jsonl`` + ``questions.jsonl``, the format of ../shared/data, and optionally
``updates.jsonl``) and their deterministic subsampling.

The corpus of a benchmark is its *evidence* documents: those some question names in ``doc_ids`` (MuSiQue ships the
distractor paragraphs in the same file; they join the corpus only with ``distractors=True``). Subsampling keeps the
first ``max_docs`` evidence documents in file order, then the questions (in file order) whose ``doc_ids`` are all
kept, at most ``max_per_kind`` of each ``kind``, at most ``max_questions`` in all. Distractors are the kept questions'
``context_doc_ids`` that are not already in the corpus.

A question's ``kind`` (handbook_dev: ``single``, ``two-fact``, ``cross-doc``, ``unanswerable``) is :data:`KINDLESS`
when the data has none (NarrativeQA, MuSiQue). ``updates.jsonl`` rows (``{"doc_id", "text", "changes": [{"qid",
"question", "answers", "stale_answers"}]}``) are revised versions of corpus documents and the questions whose answer
they change; those of kept documents are kept, at most ``max_per_kind`` changes each.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memo.errors import InvalidInput

KINDLESS = "all"  # the one kind of a benchmark whose questions have none


@dataclass(frozen=True)
class Doc:
    doc_id: str
    title: str
    text: str
    distractor: bool = False


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    answers: list[str]
    doc_ids: list[str]
    context_doc_ids: list[str] = field(default_factory=list)
    kind: str = KINDLESS


@dataclass(frozen=True)
class Change:
    """A question whose answer a revised document changes: ``answers`` the new value, ``stale_answers`` the old."""

    qid: str
    question: str
    answers: list[str]
    stale_answers: list[str]


@dataclass(frozen=True)
class Update:
    """A revised version (the whole ``text``) of corpus document ``doc_id``, and the questions it changes."""

    doc_id: str
    text: str
    changes: list[Change]


@dataclass
class Benchmark:
    name: str
    documents: list[Doc]  # the corpus the service learns and the retrievers index (evidence, then distractors)
    questions: list[Question]
    updates: list[Update] = field(default_factory=list)

    @property
    def by_id(self) -> dict[str, Doc]:
        return {d.doc_id: d for d in self.documents}

    @property
    def kinds(self) -> list[str]:
        """The questions' kinds, in order of first appearance."""
        return list(dict.fromkeys(q.kind for q in self.questions))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "documents": len(self.documents),
            "distractor_documents": sum(d.distractor for d in self.documents),
            "questions": len(self.questions),
            "words": sum(len(d.text.split()) for d in self.documents),
            "corpus_sha256": corpus_hash(self.documents),
        }
        if self.kinds != [KINDLESS]:  # data without kinds or updates keeps the summary it always had
            out["kinds"] = {k: sum(q.kind == k for q in self.questions) for k in self.kinds}
        if self.updates:
            out["updates"] = len(self.updates)
            out["changes"] = sum(len(u.changes) for u in self.updates)
        return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InvalidInput(f"{path} is missing: a benchmark folder holds documents.jsonl and questions.jsonl")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{n} is not JSON: {exc}") from exc
    return rows


def _truncate(text: str, max_words: int | None) -> str:
    """The text up to its ``max_words``-th word, its line breaks kept (a Markdown document stays Markdown)."""
    if not max_words:
        return text
    words = list(re.finditer(r"\S+", text))
    return text if len(words) <= max_words else text[: words[max_words - 1].end()]


def _first_per_kind(questions: list[Question], n: int | None) -> list[Question]:
    if n is None:
        return questions
    seen: dict[str, int] = {}
    out = []
    for q in questions:
        if seen.get(q.kind, 0) < n:
            seen[q.kind] = seen.get(q.kind, 0) + 1
            out.append(q)
    return out


def select(
    documents: list[dict[str, Any]],
    questions: list[dict[str, Any]],
    *,
    max_docs: int | None = None,
    max_questions: int | None = None,
    max_per_kind: int | None = None,
    distractors: bool = False,
    max_doc_words: int | None = None,
    name: str = "benchmark",
    updates: list[dict[str, Any]] | None = None,
) -> Benchmark:
    """The subsample described in the module docstring (pure: rows in, benchmark out)."""
    try:
        qs = [
            Question(
                qid=str(q["qid"]),
                question=str(q["question"]),
                answers=[str(a) for a in q["answers"]],
                doc_ids=[str(d) for d in q["doc_ids"]],
                context_doc_ids=[str(d) for d in q.get("context_doc_ids") or []],
                kind=str(q.get("kind") or KINDLESS),
            )
            for q in questions
        ]
        rows = {str(d["doc_id"]): d for d in documents}
        order = [str(d["doc_id"]) for d in documents]
        revised = [
            Update(
                doc_id=str(u["doc_id"]),
                text=str(u["text"]),
                changes=[
                    Change(
                        qid=str(c["qid"]),
                        question=str(c["question"]),
                        answers=[str(a) for a in c["answers"]],
                        stale_answers=[str(a) for a in c["stale_answers"]],
                    )
                    for c in u.get("changes") or []
                ],
            )
            for u in updates or []
        ]
    except KeyError as exc:
        raise InvalidInput(f"benchmark row without the field {exc}") from exc
    unknown_updates = {u.doc_id for u in revised} - set(rows)
    if unknown_updates:
        example = sorted(unknown_updates)[0]
        raise InvalidInput(f"updates name {len(unknown_updates)} unknown document(s), e.g. {example}")
    evidence = {d for q in qs for d in q.doc_ids}
    missing = evidence - set(rows)
    if missing:
        raise InvalidInput(f"questions name {len(missing)} unknown document(s), e.g. {sorted(missing)[0]}")
    kept_ids = [d for d in order if d in evidence]
    if max_docs is not None:
        kept_ids = kept_ids[:max_docs]
    kept = set(kept_ids)
    chosen = _first_per_kind([q for q in qs if q.doc_ids and set(q.doc_ids) <= kept], max_per_kind)
    if max_questions is not None:
        chosen = chosen[:max_questions]
    extra: list[str] = []
    if distractors:
        wanted = {d for q in chosen for d in q.context_doc_ids} - kept
        unknown = wanted - set(rows)
        if unknown:
            raise InvalidInput(f"context_doc_ids name {len(unknown)} unknown document(s), e.g. {sorted(unknown)[0]}")
        extra = [d for d in order if d in wanted]

    def doc(doc_id: str, distractor: bool) -> Doc:
        r = rows[doc_id]
        return Doc(doc_id, str(r.get("title") or ""), _truncate(str(r["text"]), max_doc_words), distractor)

    docs = [doc(d, False) for d in kept_ids] + [doc(d, True) for d in extra]
    kept_updates = [
        Update(u.doc_id, _truncate(u.text, max_doc_words), u.changes[:max_per_kind] if max_per_kind else u.changes)
        for u in revised
        if u.doc_id in kept
    ]
    return Benchmark(name, docs, chosen, kept_updates)


def load_benchmark(
    folder: Path,
    *,
    max_docs: int | None = None,
    max_questions: int | None = None,
    max_per_kind: int | None = None,
    distractors: bool = False,
    max_doc_words: int | None = None,
) -> Benchmark:
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a directory with documents.jsonl and questions.jsonl")
    updates = folder / "updates.jsonl"
    bench = select(
        _read_jsonl(folder / "documents.jsonl"),
        _read_jsonl(folder / "questions.jsonl"),
        max_docs=max_docs,
        max_questions=max_questions,
        max_per_kind=max_per_kind,
        distractors=distractors,
        max_doc_words=max_doc_words,
        name=folder.name,
        updates=_read_jsonl(updates) if updates.is_file() else None,
    )
    if not bench.questions:
        raise InvalidInput(f"no question of {folder} has all its documents among the {len(bench.documents)} kept")
    return bench


def corpus_hash(documents: list[Doc]) -> str:
    """A content hash of a corpus (ids, titles, texts, in order)."""
    h = hashlib.sha256()
    for d in documents:
        h.update(json.dumps([d.doc_id, d.title, d.text]).encode())
    return h.hexdigest()


def document_file(doc: Doc) -> tuple[str, bytes]:
    """The upload a benchmark document becomes: a Markdown file with its title as a heading."""
    body = f"# {doc.title}\n\n{doc.text}\n" if doc.title else f"{doc.text}\n"
    return f"{doc.doc_id}.md", body.encode()
