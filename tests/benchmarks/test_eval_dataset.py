"""Benchmark loading and its deterministic subsampling."""

from __future__ import annotations

import json

import pytest

from benchmarks.dataset import corpus_hash, document_file, load_benchmark, select
from memo.errors import InvalidInput

DOCS = [
    {"doc_id": "x1", "title": "Distractor one", "text": "Noise paragraph one."},
    {"doc_id": "a", "title": "Alpha", "text": "Alpha was founded in 1901 by Ann."},
    {"doc_id": "b", "title": "Beta", "text": "Beta is a river."},
    {"doc_id": "x2", "title": "Distractor two", "text": "Noise paragraph two."},
    {"doc_id": "c", "title": "Gamma", "text": "Gamma one two three four five six."},
]
QUESTIONS = [
    {
        "qid": "q1",
        "doc_ids": ["a"],
        "question": "Who founded Alpha?",
        "answers": ["Ann"],
        "context_doc_ids": ["a", "x1"],
    },
    {"qid": "q2", "doc_ids": ["a", "c"], "question": "Q2?", "answers": ["y"], "context_doc_ids": ["x2", "c", "a"]},
    {"qid": "q3", "doc_ids": ["b"], "question": "Q3?", "answers": ["z"], "context_doc_ids": ["b", "x2"]},
    {"qid": "q4", "doc_ids": ["b", "a"], "question": "Q4?", "answers": ["w"], "context_doc_ids": ["x1"]},
]


def test_corpus_is_the_evidence_documents_in_file_order():
    bench = select(DOCS, QUESTIONS)
    assert [d.doc_id for d in bench.documents] == ["a", "b", "c"]  # distractors only on request
    assert [q.qid for q in bench.questions] == ["q1", "q2", "q3", "q4"]


def test_first_docs_then_questions_whose_documents_are_all_kept():
    bench = select(DOCS, QUESTIONS, max_docs=2)
    assert [d.doc_id for d in bench.documents] == ["a", "b"]
    assert [q.qid for q in bench.questions] == ["q1", "q3", "q4"]  # q2 also needs c
    assert [q.qid for q in select(DOCS, QUESTIONS, max_docs=2, max_questions=2).questions] == ["q1", "q3"]
    assert [q.qid for q in select(DOCS, QUESTIONS, max_docs=1).questions] == ["q1"]


def test_subsampling_is_deterministic():
    one = select(DOCS, QUESTIONS, max_docs=2, max_questions=2, distractors=True)
    two = select(DOCS, QUESTIONS, max_docs=2, max_questions=2, distractors=True)
    assert one == two
    assert corpus_hash(one.documents) == corpus_hash(two.documents)
    assert corpus_hash(one.documents) != corpus_hash(select(DOCS, QUESTIONS, max_docs=2).documents)


def test_distractors_are_the_kept_questions_context_documents():
    bench = select(DOCS, QUESTIONS, max_docs=2, max_questions=2, distractors=True)  # q1, q3
    assert [(d.doc_id, d.distractor) for d in bench.documents] == [
        ("a", False),
        ("b", False),
        ("x1", True),
        ("x2", True),
    ]
    assert bench.summary()["distractor_documents"] == 2
    only_q1 = select(DOCS, QUESTIONS, max_docs=1, distractors=True)
    assert [d.doc_id for d in only_q1.documents] == ["a", "x1"]  # an evidence document is never a distractor


def test_truncation_and_upload_file():
    bench = select(DOCS, QUESTIONS, max_doc_words=3)
    assert bench.by_id["a"].text == "Alpha was founded"
    name, data = document_file(bench.by_id["a"])
    assert name == "a.md" and data.decode() == "# Alpha\n\nAlpha was founded\n"
    assert select(DOCS, QUESTIONS, max_doc_words=5).by_id["a"].text == "Alpha was founded in 1901"
    kept = select(
        [{"doc_id": "m", "title": "", "text": "# T\n\nOne two.\n\nThree four five"}],
        [QUESTIONS[0] | {"doc_ids": ["m"]}],
        max_doc_words=4,
    )
    assert kept.by_id["m"].text == "# T\n\nOne two."  # truncation keeps the line breaks


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(InvalidInput, match="unknown document"):
        select(DOCS, [{"qid": "q", "doc_ids": ["nope"], "question": "?", "answers": []}])
    with pytest.raises(InvalidInput, match="field"):
        select(DOCS, [{"qid": "q", "question": "?"}])
    with pytest.raises(InvalidInput, match="missing"):
        load_benchmark(tmp_path)
    (tmp_path / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "questions.jsonl").write_text(json.dumps(QUESTIONS[1]) + "\n")
    with pytest.raises(InvalidInput, match="no question"):
        load_benchmark(tmp_path, max_docs=1)
    bench = load_benchmark(tmp_path)
    assert bench.name == tmp_path.name and [q.qid for q in bench.questions] == ["q2"]


def test_the_shared_benchmarks_load(tmp_path):
    from tests.conftest import REPO

    data = REPO.parent / "shared" / "data"
    nqa = load_benchmark(data / "narrativeqa_dev", max_docs=2)
    assert len(nqa.documents) == 2 and nqa.questions
    assert all(set(q.doc_ids) <= {d.doc_id for d in nqa.documents} for q in nqa.questions)
    msq = load_benchmark(data / "musique_dev", max_docs=10, distractors=True)
    gold = {d.doc_id for d in msq.documents if not d.distractor}
    assert len(gold) == 10 and msq.questions
    assert all(set(q.doc_ids) <= gold for q in msq.questions)
    assert {d for q in msq.questions for d in q.context_doc_ids} == {d.doc_id for d in msq.documents}
