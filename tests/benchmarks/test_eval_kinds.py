"""Accuracy, abstention, sources, updates and "executive keeps" figures from per-question records; question kinds
and updates in the benchmark loader."""

from __future__ import annotations

import json

import pytest

from benchmarks import report
from benchmarks.dataset import KINDLESS, load_benchmark, select
from benchmarks.metrics import abstains, correct, states_any


def _rec(method: str, qid: str, kind: str, prediction: str, answers: list[str], **extra) -> dict:
    abstained = extra.pop("abstained", None)
    r = {
        "method": method,
        "phase": extra.pop("phase", "main"),
        "qid": qid,
        "kind": kind,
        "doc_ids": extra.pop("doc_ids", ["d1"]),
        "question": "q?",
        "answers": answers,
        "prediction": prediction,
        "scores": {"em": 0.0, "f1": extra.pop("f1", 0.0), "rouge_l": 0.0},
        "abstained": abstains(prediction) if abstained is None else abstained,
        "cost": {"calls": 1, "prompt_tokens": 8, "completion_tokens": 2, "tokens": 10},
        "seconds": 1.0,
        "error": extra.pop("error", None),
        **extra,
    }
    r["correct"] = not r["error"] and correct(prediction, answers, kind, r["abstained"])
    return r


@pytest.mark.parametrize(
    "text",
    [
        "I don't know",
        "I don’t know.",
        "",
        "Unknown.",
        "The passages do not say.",
        "It is not stated in the documents.",
        "The document doesn't mention a preferred airline.",
        "There is no information about that.",
        "This cannot be determined from the passages.",
        "I don't know: the documents do not answer this.",
    ],
)
def test_declining_answers_are_abstentions(text):
    assert abstains(text)


@pytest.mark.parametrize(
    "text",
    ["$189 per night", "Marisol Quennell", "Business class is not allowed unless the flight exceeds 7 hours", "No."],
)
def test_answers_are_not_abstentions(text):
    assert not abstains(text)


def test_accuracy_states_a_reference_and_unanswerable_is_an_abstention():
    assert states_any("The cap is $189 per night.", ["$189", "189 dollars"])  # contained after normalisation
    assert states_any("Wayfarer portal", ["the Wayfarer portal"])
    assert not states_any("$245 per night", ["$189"])
    assert correct("It is $189.", ["$189"], "single", abstained=False)
    assert correct("I don't know", ["unknown"], "unanswerable", abstained=True)
    assert not correct("Skyline Air", ["unknown"], "unanswerable", abstained=False)
    assert not correct("$189", ["unknown"], "unanswerable", abstained=False)


def test_by_kind_and_abstention_shares():
    records = [
        _rec("bm25", "1", "single", "$189", ["$189"], f1=1.0),
        _rec("bm25", "2", "single", "I don't know", ["Wayfarer"]),
        _rec("bm25", "3", "unanswerable", "The passages do not say.", ["unknown"]),
        _rec("bm25", "4", "unanswerable", "Skyline Air", ["unknown"]),
        _rec("bm25", "5", "two-fact", "x", ["$48"], error="BackendError: down"),
        _rec("bm25", "1", "change", "$205", ["$205"], phase="replace"),  # not a main-phase record: not counted
    ]
    fig = report.summarise(records, ["bm25"], {"bm25": 1.0})["bm25"]
    assert fig["questions"] == 5
    assert list(fig["by_kind"]) == ["single", "unanswerable", "two-fact"]
    single = fig["by_kind"]["single"]
    assert single == {"questions": 2, "accuracy": 0.5, "em": 0.0, "f1": 0.5, "abstained": 0.5}
    assert fig["by_kind"]["unanswerable"]["accuracy"] == fig["by_kind"]["unanswerable"]["abstained"] == 0.5
    assert fig["by_kind"]["two-fact"]["accuracy"] == 0.0 and fig["by_kind"]["two-fact"]["abstained"] == 0.0
    assert fig["abstention"] == {"unanswerable": 0.5, "answerable": round(1 / 3, 4)}


def test_a_kindless_benchmark_is_one_kind_and_older_records_are_scored_too():
    old = {k: v for k, v in _rec("gold", "1", KINDLESS, "Ann", ["Ann"]).items() if k not in ("kind", "phase")}
    old.pop("abstained"), old.pop("correct")
    fig = report.summarise([old], ["gold"], {})["gold"]
    assert fig["by_kind"] == {KINDLESS: {"questions": 1, "accuracy": 1.0, "em": 0.0, "f1": 0.0, "abstained": 0.0}}
    assert fig["abstention"] == {"unanswerable": None, "answerable": 0.0}


def test_executive_keeps_what_the_memory_knew():
    records = []
    for qid, alone, memo in (
        ("1", "$189", "$189"),
        ("2", "$62", "I don't know"),
        ("3", "$245", "$245"),
        ("4", "x", "$1"),
    ):
        records.append(_rec("memory-only", qid, "single", alone, [alone if qid != "4" else "$1"]))
        records.append(_rec("memo", qid, "single", memo, [alone if qid != "4" else "$1"]))
    keeps = report.executive_keeps(records)
    assert keeps == {
        "questions": 4,
        "memory_only_right": 3,
        "memo_also_right": 2,
        "share": round(2 / 3, 4),
        "memo_right_memory_only_wrong": 1,
    }
    assert report.executive_keeps([r for r in records if r["method"] == "memo"]) is None


def _src(*doc_ids: str) -> list[dict]:
    return [{"doc_id": d, "document_id": f"id-{d}", "title": f"{d}.md", "score": 0.5, "passages": []} for d in doc_ids]


def test_sources_include_and_precision_on_answered_single_questions():
    records = [
        _rec("memo", "1", "single", "$189", ["$189"], sources=_src("d1"), abstained=False),
        _rec("memo", "2", "single", "$245", ["$189"], sources=_src("d1", "d2"), abstained=False),  # wrong answer
        _rec("memo", "3", "single", "$62", ["$62"], sources=_src("d2"), abstained=False),
        _rec("memo", "4", "single", "I don't know", ["$48"], sources=[], abstained=True),  # not answered
        _rec("memo", "5", "two-fact", "Ann", ["Ann"], sources=_src("d1"), abstained=False),
        _rec("memo", "6", "unanswerable", "I don't know", ["unknown"], sources=[], abstained=True),
        _rec("bm25", "1", "single", "$189", ["$189"]),
    ]
    src = report.sources(records)
    assert src["kind"] == "single" and src["answered_share"] == 0.75 and src["questions"] == 3
    assert src["include"] == round(2 / 3, 4)  # questions 1 and 2 cite d1
    assert src["precision"] == 0.5  # d1, d1, d2, d2: two of the four returned documents are the question's
    assert src["with_sources"] == 1.0
    assert src["on_correct"] == {"questions": 2, "include": 0.5, "precision": 0.5, "with_sources": 1.0}
    assert src["by_kind"]["two-fact"] == {"questions": 1, "include": 1.0, "precision": 1.0, "with_sources": 1.0}
    assert "unanswerable" not in src["by_kind"]
    assert report.sources([r for r in records if r["method"] == "bm25"]) is None  # no memo, no sources


def test_update_figures_new_stale_and_the_deleted_documents_questions():
    def change(phase: str, prediction: str, abstained: bool = False, method: str = "memo") -> dict:
        r = _rec(method, "u1", "change", prediction, ["$205"], phase=phase, abstained=abstained)
        return {**r, "stale_answers": ["$189"]}

    records = [
        change("replace-pending", "I don't know: the documents do not answer this.", abstained=True),
        change("replace-pending", "$189 per night"),
        change("replace", "$205 per night"),
        change("replace", "It was $189, now $205"),  # both values stated: new and stale
        change("replace-memory-only", "$189", method="memory-only"),
        _rec("memo", "q1", "single", "Wayfarer", ["Wayfarer"], phase="delete-pending", abstained=False),
        _rec("memo", "q2", "single", "Portal X", ["Wayfarer"], phase="delete-pending", abstained=False),
        _rec("memo", "q1", "single", "I don't know", ["Wayfarer"], phase="delete", abstained=True),
        _rec("memo", "q2", "single", "Portal X", ["Wayfarer"], phase="delete", abstained=False),
        _rec("memo", "m", "single", "$189", ["$189"]),  # main phase: not an update figure
    ]
    fig = report.update_figures(records)
    assert fig["pending"] == {"questions": 2, "new": 0.0, "stale": 0.5, "abstained": 0.5}
    assert fig["after"] == {"questions": 2, "new": 1.0, "stale": 0.5, "abstained": 0.0}
    assert fig["memory_only_after"] == {"questions": 1, "new": 0.0, "stale": 1.0, "abstained": 0.0}
    assert fig["delete"]["pending"] == {"questions": 2, "still_answered": 0.5, "answered": 1.0}
    assert fig["delete"]["after"] == {"questions": 2, "still_answered": 0.0, "answered": 0.5}
    assert "delete" not in report.update_figures(records[:4]) and "memory_only_after" not in report.update_figures([])


def _results(records: list[dict], methods: list[str], **extra) -> dict:
    return {
        "command": "memo eval --dataset handbook",
        "created_at": "2026-12-04T00:00:00Z",
        "benchmark": {"name": "hb", "questions": 2, "documents": 1, "distractor_documents": 0, "corpus_sha256": "x"},
        "methods": report.summarise(records, methods, dict.fromkeys(methods, 1.0)),
        "executive_keeps": report.executive_keeps(records),
        "sources": report.sources(records),
        "setup_seconds": {},
        "models": {"executive": "e", "memory": "m", "roles": {"executive": {"model": "e"}}},
        "settings": {"methods": methods},
        "collection": None,
        **extra,
    }


def test_markdown_tables_and_combine_recompute_the_figures_of_several_runs(tmp_path):
    memo = [
        _rec("memo", "1", "single", "$189", ["$189"], sources=_src("d1"), abstained=False),
        _rec("memo", "2", "unanswerable", "I don't know", ["unknown"], sources=[], abstained=True),
        _rec("memory-only", "1", "single", "$189", ["$189"]),
        _rec("memory-only", "2", "unanswerable", "Skyline", ["unknown"]),
        {**_rec("memo", "u1", "change", "$205", ["$205"], phase="replace"), "stale_answers": ["$189"]},
    ]
    updates = {
        "mode": "retrain",
        "collection": "c-updates-1",
        "replaced": {"d1": {"seconds": 12.5, "job_id": "j", "version_id": "v2", "error": None}},
        **report.update_figures(memo),
    }
    tta = {
        "version_id": "v1",
        "kind": "single",
        "documents_total": 1,
        "answerable_documents": 1,
        "mean_seconds": 30.0,
        "max_seconds": 30.0,
        "documents": {"d1": {"questions": 1, "right": 1, "upload_to_publish_seconds": 30.0, "seconds": 30.0}},
    }
    mem = _results(memo, ["memo", "memory-only"], updates=updates, time_to_answerable=tta)
    report.write(tmp_path / "mem", mem, memo)
    md = (tmp_path / "mem" / "results.md").read_text()
    assert "| method | single acc | unanswerable: abstained | wrongly abstained (answerable) |" in md
    assert "| memo | 1.00 | 1.00 | 0.00 |" in md and "| memory-only | 1.00 | 0.00 | 0.00 |" in md
    assert "| memo | unanswerable | 1 | 1.00 | 0.00 | 0.00 | 1.00 |" in md
    assert "`memo` answers 1 right (share 1.00)" in md
    assert "| single | 1 | 1.00 | 1.00 | 1.00 |" in md
    assert "| after the replace job | 1 | 1.00 | 0.00 | 0.00 |" in md and "Replaced `d1`" in md
    assert "| d1 | 1 | 1 | 30.0 | 30.0 |" in md

    base_records = [_rec("bm25", "1", "single", "$189", ["$189"]), _rec("bm25", "2", "unanswerable", "x", ["unknown"])]
    base = _results(base_records, ["bm25"])
    del base["benchmark"]["corpus_sha256"]  # a run of an older harness: fewer summary keys, still comparable
    report.write(tmp_path / "base", base, base_records)
    merged = report.combine([tmp_path / "base", tmp_path / "mem"], tmp_path / "all")
    assert list(merged["methods"]) == ["memo", "memory-only", "bm25"]
    assert merged["executive_keeps"]["memory_only_right"] == 1 and merged["sources"]["include"] == 1.0
    assert merged["updates"] == json.loads(json.dumps(updates)) and merged["time_to_answerable"] == tta
    assert merged["methods"]["bm25"]["by_kind"]["unanswerable"]["accuracy"] == 0.0
    lines = (tmp_path / "all" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 7 and sum(json.loads(x)["phase"] == "replace" for x in lines) == 1

    delta = report.compare(merged["methods"], {"bm25": {**merged["methods"]["bm25"], "f1": 10.0}})
    assert delta["bm25"]["f1"] == -10.0 and delta["bm25"]["by_kind"]["single"] == {
        "accuracy": 0.0,
        "f1": 0.0,
        "abstained": 0.0,
    }


DOCS = [{"doc_id": d, "title": d.upper(), "text": f"{d} one two three four"} for d in ("a", "b", "c")]
QS = [
    {"qid": "1", "doc_ids": ["a"], "question": "?", "answers": ["x"], "kind": "single"},
    {"qid": "2", "doc_ids": ["a"], "question": "?", "answers": ["x"], "kind": "single"},
    {"qid": "3", "doc_ids": ["a", "b"], "question": "?", "answers": ["x"], "kind": "cross-doc"},
    {"qid": "4", "doc_ids": ["b"], "question": "?", "answers": ["unknown"], "kind": "unanswerable"},
    {"qid": "5", "doc_ids": ["c"], "question": "?", "answers": ["x"], "kind": "single"},
]
UPDATES = [
    {
        "doc_id": "a",
        "text": "a revised one two three four",
        "changes": [
            {"qid": "a-u1", "question": "?", "answers": ["new"], "stale_answers": ["old"]},
            {"qid": "a-u2", "question": "?", "answers": ["new2"], "stale_answers": ["old2"]},
        ],
    },
    {
        "doc_id": "c",
        "text": "c revised",
        "changes": [{"qid": "c-u1", "question": "?", "answers": ["n"], "stale_answers": ["o"]}],
    },
]


def test_kinds_per_kind_cap_and_updates_of_kept_documents():
    bench = select(DOCS, QS, updates=UPDATES)
    assert bench.kinds == ["single", "cross-doc", "unanswerable"]
    assert bench.summary()["kinds"] == {"single": 3, "cross-doc": 1, "unanswerable": 1}
    assert bench.summary()["updates"] == 2 and bench.summary()["changes"] == 3
    capped = select(DOCS, QS, max_per_kind=1, updates=UPDATES, max_doc_words=3)
    assert [q.qid for q in capped.questions] == ["1", "3", "4"]
    assert [(u.doc_id, u.text, [c.qid for c in u.changes]) for u in capped.updates] == [
        ("a", "a revised one", ["a-u1"]),
        ("c", "c revised", ["c-u1"]),
    ]
    two = select(DOCS, QS, max_docs=2, updates=UPDATES)  # c is not kept: neither is its revision
    assert [u.doc_id for u in two.updates] == ["a"] and two.updates[0].changes[1].stale_answers == ["old2"]
    plain = select(DOCS, [{k: v for k, v in q.items() if k != "kind"} for q in QS])
    assert {q.kind for q in plain.questions} == {KINDLESS} and "kinds" not in plain.summary()
    assert "updates" not in plain.summary()


def test_bad_updates_are_rejected():
    from memo.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown document"):
        select(DOCS, QS, updates=[{"doc_id": "zz", "text": "t", "changes": []}])
    with pytest.raises(InvalidInput, match="field"):
        select(DOCS, QS, updates=[{"doc_id": "a", "text": "t", "changes": [{"qid": "u", "question": "?"}]}])


def test_the_handbook_loads_with_its_kinds_and_updates():
    from tests.conftest import REPO

    bench = load_benchmark(REPO.parent / "shared" / "data" / "handbook_dev")
    assert bench.summary()["kinds"] == {"single": 84, "two-fact": 24, "cross-doc": 11, "unanswerable": 5}
    assert [u.doc_id for u in bench.updates] == ["hb-kestrel-travel", "hb-tallowfen-support"]
    assert bench.summary()["changes"] == 8 and len(bench.documents) == 8
    sliced = load_benchmark(REPO.parent / "shared" / "data" / "handbook_dev", max_docs=2, max_per_kind=1)
    assert [q.kind for q in sliced.questions] == ["single", "two-fact", "unanswerable", "cross-doc"]
    assert [(u.doc_id, len(u.changes)) for u in sliced.updates] == [("hb-kestrel-travel", 1)]


def test_a_failed_update_run_is_reported_and_the_rest_is_written(tmp_path):
    records = [_rec("memo", "1", "single", "$189", ["$189"], sources=_src("d1"), abstained=False)]
    results = _results(records, ["memo"], updates={"error": "Conflict: busy", "wall_seconds": 1.0})
    report.write(tmp_path, results, records)
    md = (tmp_path / "results.md").read_text()
    assert "The update run failed: Conflict: busy" in md and "| memo | 1.00 |" in md
