"""Benchmark folders (``documents.jsonl`` + ``questions.jsonl``, the format of ../shared/data) and their
deterministic subsampling.

The corpus of a benchmark is its *evidence* documents: those some question names in ``doc_ids`` (MuSiQue ships the
distractor paragraphs in the same file; they join the corpus only with ``distractors=True``). Subsampling keeps the
first ``max_docs`` evidence documents in file order, then the questions (in file order) whose ``doc_ids`` are all
kept, at most ``max_questions`` of them. Distractors are the kept questions' ``context_doc_ids`` that are not already
in the corpus.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memo.errors import InvalidInput


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


@dataclass
class Benchmark:
    name: str
    documents: list[Doc]  # the corpus the service learns and the retrievers index (evidence, then distractors)
    questions: list[Question]

    @property
    def by_id(self) -> dict[str, Doc]:
        return {d.doc_id: d for d in self.documents}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": len(self.documents),
            "distractor_documents": sum(d.distractor for d in self.documents),
            "questions": len(self.questions),
            "words": sum(len(d.text.split()) for d in self.documents),
            "corpus_sha256": corpus_hash(self.documents),
        }


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
    if not max_words:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def select(
    documents: list[dict[str, Any]],
    questions: list[dict[str, Any]],
    *,
    max_docs: int | None = None,
    max_questions: int | None = None,
    distractors: bool = False,
    max_doc_words: int | None = None,
    name: str = "benchmark",
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
            )
            for q in questions
        ]
        rows = {str(d["doc_id"]): d for d in documents}
        order = [str(d["doc_id"]) for d in documents]
    except KeyError as exc:
        raise InvalidInput(f"benchmark row without the field {exc}") from exc
    evidence = {d for q in qs for d in q.doc_ids}
    missing = evidence - set(rows)
    if missing:
        raise InvalidInput(f"questions name {len(missing)} unknown document(s), e.g. {sorted(missing)[0]}")
    kept_ids = [d for d in order if d in evidence]
    if max_docs is not None:
        kept_ids = kept_ids[:max_docs]
    kept = set(kept_ids)
    chosen = [q for q in qs if q.doc_ids and set(q.doc_ids) <= kept]
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
    return Benchmark(name, docs, chosen)


def load_benchmark(
    folder: Path,
    *,
    max_docs: int | None = None,
    max_questions: int | None = None,
    distractors: bool = False,
    max_doc_words: int | None = None,
) -> Benchmark:
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a directory with documents.jsonl and questions.jsonl")
    bench = select(
        _read_jsonl(folder / "documents.jsonl"),
        _read_jsonl(folder / "questions.jsonl"),
        max_docs=max_docs,
        max_questions=max_questions,
        distractors=distractors,
        max_doc_words=max_doc_words,
        name=folder.name,
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
