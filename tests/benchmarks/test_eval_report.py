"""The harness's pure parts: judge verdicts, per-method figures, comparison, written files, BM25 retrieval."""

from __future__ import annotations

import json

from benchmarks import report
from benchmarks.baselines import parse_verdict, read_messages


def _record(method: str, qid: str, f1: float, tokens: int, seconds: float, judge: float | None = None) -> dict:
    return {
        "method": method,
        "qid": qid,
        "question": "q?",
        "answers": ["a"],
        "prediction": "a",
        "scores": {"em": float(f1 == 1.0), "f1": f1, "rouge_l": f1},
        "cost": {"calls": 1, "prompt_tokens": tokens - 2, "completion_tokens": 2, "tokens": tokens},
        "seconds": seconds,
        "error": None,
        "judge": judge,
        "judge_raw": None if judge is None else "CORRECT",
    }


def test_parse_verdict():
    assert parse_verdict("CORRECT") is True
    assert parse_verdict("Incorrect.") is False
    assert parse_verdict("  correct, because") is True
    assert parse_verdict("maybe") is None


def test_read_messages_number_the_passages():
    msgs = read_messages("Who?", ["one", "two"])
    assert "[1] one\n\n[2] two" in msgs[-1]["content"] and msgs[-1]["content"].endswith("Question: Who?")


def test_summarise_and_compare():
    records = [
        _record("bm25", "1", 1.0, 100, 1.0, judge=1.0),
        _record("bm25", "2", 0.5, 300, 3.0, judge=0.0),
        _record("gold", "1", 0.0, 50, 2.0),
        _record("gold", "2", 0.0, 50, 2.0),
        {**_record("dense", "1", 0.0, 50, 2.0), "judge_raw": "The answer is", "judge": None},  # unparsed = wrong
        _record("dense", "2", 0.0, 50, 2.0, judge=1.0),
    ]
    figures = report.summarise(records, ["bm25", "gold", "dense"], {"bm25": 3.5, "gold": 2.5})
    assert figures["bm25"]["f1"] == 75.0 and figures["bm25"]["em"] == 50.0 and figures["bm25"]["judge"] == 50.0
    assert figures["bm25"]["tokens"] == 400 and figures["bm25"]["tokens_per_question"] == 200.0
    assert figures["bm25"]["seconds_per_question"] == 2.0 and figures["bm25"]["wall_seconds"] == 3.5
    assert figures["gold"]["judge"] is None and figures["gold"]["questions"] == 2
    assert figures["dense"]["judge"] == 50.0 and figures["dense"]["judge_unparsed"] == 1
    assert figures["dense"]["wall_seconds"] == 0.0
    previous = {"bm25": {**figures["bm25"], "f1": 80.0}, "other": figures["gold"]}
    delta = report.compare(figures, previous)
    same = {"accuracy": 0.0, "f1": 0.0, "abstained": 0.0}  # the per-kind shares (one kind: the data has none)
    assert delta == {"bm25": {"em": 0.0, "f1": -5.0, "rouge_l": 0.0, "judge": 0.0, "by_kind": {"all": same}}}
    assert report.compare(figures, {"bm25": {"f1": 80.0}}) == {"bm25": {"f1": -5.0}}  # a run of an older harness


def test_write_produces_every_file(tmp_path):
    failed = {**_record("closed-book", "1", 0.0, 5, 0.5), "error": "BackendError: LLM server unreachable"}
    records = [_record("memo", "1", 1.0, 10, 1.0), failed]
    results = {
        "command": "memo eval --dataset x",
        "benchmark": {"name": "tiny", "questions": 1, "documents": 1, "distractor_documents": 0},
        "methods": report.summarise(records, ["memo", "closed-book"], {"memo": 1.0, "closed-book": 0.5}),
        "setup_seconds": {"memo": 12.0},
        "models": {"executive": "exec-model", "memory": "mem-model"},
        "collection": {
            "name": "c",
            "version_id": "v",
            "reflections": 7,
            "reused": False,
            "ingest_seconds": 3.0,
            "documents_not_learned": 2,
        },
        "comparison": {"against": "old.json", "delta": {"memo": {"f1": 3.0}}},
    }
    files = report.write(tmp_path, results, records)
    assert set(files) == {"results.json", "results.md", "records.jsonl", "accuracy.png", "cost.png"}
    for p in files.values():
        assert p.stat().st_size > 0
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "results.md").read_text()
    assert "| memo | 100.00 | 100.00 | 100.00 | — | 0 | 10 |" in md
    assert "| closed-book | 0.00 | 0.00 | 0.00 | — | 1 | 5 |" in md  # a failed question is shown, not hidden
    assert "2 document(s) yielded no reflection and were left out" in md
    assert "| memo | — | 3.00 | — | — |" in md and "memo eval --dataset x" in md
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["memo"]["f1"] == 100.0
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 2


def _run(tmp_path, name: str, methods: list[str], executive: str = "exec-model", collection: dict | None = None):
    records = [_record(m, q, 1.0 if m == "memo" else 0.5, 10, 1.0) for m in methods for q in ("1", "2")]
    results = {
        "command": f"memo eval --methods {','.join(methods)}",
        "created_at": "2026-11-24T00:00:00Z",
        "benchmark": {"name": "tiny", "questions": 2, "documents": 1, "distractor_documents": 0, "corpus_sha256": "x"},
        "methods": report.summarise(records, methods, {m: 2.0 for m in methods}),
        "setup_seconds": {m: 1.0 for m in methods},
        "models": {"executive": executive, "memory": "mem", "roles": {"executive": {"model": executive}}},
        "settings": {"methods": methods},
        "collection": collection,
    }
    report.write(tmp_path / name, results, records)
    return tmp_path / name


def test_combine_runs_that_answered_different_methods(tmp_path):
    coll = {"name": "c", "version_id": "v", "reflections": 7, "reused": False, "ingest_seconds": 3.0}
    base = _run(tmp_path, "base", ["closed-book", "bm25"])
    mem = _run(tmp_path, "mem", ["memo"], collection=coll)
    merged = report.combine([base, mem], tmp_path / "all")
    assert list(merged["methods"]) == ["memo", "closed-book", "bm25"]  # the harness's order
    assert merged["collection"] == coll and merged["methods"]["memo"]["f1"] == 100.0
    md = (tmp_path / "all" / "results.md").read_text()
    assert "| memo | 100.00 |" in md and "| bm25 | 0.00 | 50.00 |" in md and " && " in md
    assert len((tmp_path / "all" / "records.jsonl").read_text().splitlines()) == 6


def test_combine_takes_only_the_kept_methods_of_a_run(tmp_path):
    """A memo re-answered in a newer run replaces the older run's: the older one gives only its baselines, and the
    memory's figures (collection) come from the newer run."""
    old_coll = {"name": "c", "version_id": "old", "reflections": 7, "reused": False, "ingest_seconds": 3.0}
    new_coll = {**old_coll, "version_id": "new"}
    old = _run(tmp_path, "old", ["memo", "bm25"], collection=old_coll)
    new = _run(tmp_path, "new", ["memo"], collection=new_coll)
    merged = report.combine([old, new], tmp_path / "all", keep={old: {"bm25"}})
    assert list(merged["methods"]) == ["memo", "bm25"] and merged["collection"] == new_coll
    assert merged["setup_seconds"] == {"bm25": 1.0, "memo": 1.0}
    assert len((tmp_path / "all" / "records.jsonl").read_text().splitlines()) == 4


def test_combine_refuses_runs_that_are_not_comparable(tmp_path):
    import pytest

    from memo.errors import InvalidInput

    base = _run(tmp_path, "base", ["closed-book", "bm25"])
    with pytest.raises(InvalidInput, match="executive"):
        report.combine([base, _run(tmp_path, "other", ["memo"], executive="another")], tmp_path / "x")
    with pytest.raises(InvalidInput, match="more than one run: bm25"):
        report.combine([base, _run(tmp_path, "again", ["bm25"])], tmp_path / "x")
    with pytest.raises(InvalidInput, match="no results.json"):
        report.combine([base, tmp_path / "missing"], tmp_path / "x")
    with pytest.raises(InvalidInput, match="did not answer memo"):
        report.combine([base, _run(tmp_path, "mem", ["memo"])], tmp_path / "x", keep={base: {"memo"}})
    assert not (tmp_path / "x").exists()


def test_bm25_finds_the_passage_with_the_words():
    from benchmarks.dataset import Doc
    from benchmarks.retrieval import BM25Index, chunk_corpus

    docs = [
        Doc("a", "Alpha", "The lighthouse keeper Ann painted the tower red. " * 3),
        Doc("b", "Beta", "Bakers in the valley sell rye bread every Sunday. " * 3),
    ]
    passages = chunk_corpus(docs, words=20, overlap=0)
    assert {p.doc_id for p in passages} == {"a", "b"} and passages[0].text.startswith("Alpha: ")
    index = BM25Index(passages)
    assert index.search("Who sells rye bread?", 1)[0].doc_id == "b"
    assert index.search("lighthouse tower", 1)[0].doc_id == "a"
    assert index.search("the of and", 2) == []


def test_rescore_scores_the_answers_again_and_keeps_them(tmp_path):
    run = _run(tmp_path, "run", ["memory-only"])
    lines = (run / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:  # scored by an older scorer that let "7 days" recall "14 days"
        r.update(answers=["14 days"], prediction="7 days", correct=True, kind="single", doc_ids=["d"])
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = report.rescore(run)
    assert results["methods"]["memory-only"]["by_kind"]["single"]["accuracy"] == 0.0
    again = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in again] == [False, False] and [r["prediction"] for r in again] == ["7 days"] * 2
    assert "| memory-only | single | 2 | 0.00 |" in (run / "results.md").read_text()
