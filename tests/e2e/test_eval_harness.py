"""The evaluation harness end to end on a slice of handbook_dev (2 documents, one question of each kind, one changed
question), with the real packaged SmolLM2 in every role (generator, memory, executive, judge): real ingestion and
training, the real query path, real BM25 and MiniLM retrieval, then the update run (a revised document through the
replace route, a deletion through the delete route, each job through the real pipeline). Then two cheap runs through
the CLI: the same slice with other methods, which must reuse the trained memory instead of training again, and a
NarrativeQA slice (no kinds, no updates) with the baselines that need no memory.

Checks that every figure is computed and in range, not its value (a 2-step memory knows little)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmarks.baselines import METHODS
from benchmarks.harness import EvalConfig, run_eval
from memo.settings import LLMRole
from services.cli import app
from tests.conftest import REPO, make_settings

pytestmark = pytest.mark.slow

DATA = REPO.parent / "shared" / "data"
HANDBOOK = DATA / "handbook_dev"
TRAIN = {"max_steps": 2, "batch_size": 2}
REFLECT = {"stages": ["direct"], "direct_variants": 1}  # the cheapest reflections: one question per stated fact
FILES = {"results.json", "results.md", "records.jsonl", "accuracy.png", "cost.png"}
KINDS = ["single", "two-fact", "unanswerable", "cross-doc"]  # the slice's questions, in file order


def _share(x: object) -> bool:
    """A share that was computed: in [0, 1], or None where nothing was there to count (e.g. no answered question)."""
    return x is None or (isinstance(x, float | int) and 0.0 <= x <= 1.0)


def _check_handbook_figures(results: dict, coll: dict) -> None:
    for method, fig in results["methods"].items():
        assert sorted(fig["by_kind"]) == sorted(KINDS), (method, fig["by_kind"])
        for kind, f in fig["by_kind"].items():
            assert f["questions"] == 1 and set(f) >= {"accuracy", "f1", "em", "abstained"}, (method, kind, f)
            assert all(0.0 <= f[k] <= 1.0 for k in ("accuracy", "f1", "em", "abstained")), (method, kind, f)
        assert fig["by_kind"]["unanswerable"]["accuracy"] == fig["by_kind"]["unanswerable"]["abstained"]
        assert 0 <= fig["abstention"]["unanswerable"] <= 1 and 0 <= fig["abstention"]["answerable"] <= 1

    keeps = results["executive_keeps"]
    assert keeps["questions"] == 4 and 0 <= keeps["memo_also_right"] <= keeps["memory_only_right"] <= 4
    assert _share(keeps["share"]) and keeps["memo_right_memory_only_wrong"] >= 0

    src = results["sources"]
    assert src["kind"] == "single" and _share(src["answered_share"])
    for f in (src, src["on_correct"]):
        assert f["questions"] >= 0 and all(_share(f[k]) for k in ("include", "precision", "with_sources"))

    upd = results["updates"]
    assert upd["mode"] == "retrain" and upd["collection"].startswith(coll["name"] + "-updates-")
    replaced = upd["replaced"]["hb-kestrel-travel"]
    assert replaced["error"] is None and replaced["seconds"] > 0 and replaced["version_id"]
    assert replaced["version_id"] != coll["version_id"]
    for key in ("pending", "after", "memory_only_after"):
        f = upd[key]
        assert f["questions"] == 1 and all(_share(f[k]) and f[k] is not None for k in ("new", "stale", "abstained"))
    dele = upd["delete"]
    assert dele["doc_id"] == "hb-kestrel-travel"  # the only document with a single question in the slice
    assert dele["error"] is None and dele["seconds"] > 0 and dele["job_id"]
    for key in ("pending", "after"):
        f = dele[key]
        assert f["questions"] == 1 and _share(f["still_answered"]) and _share(f["answered"])
    assert upd["wall_seconds"] > 0

    tta = results["time_to_answerable"]
    assert tta["version_id"] == coll["version_id"] and tta["kind"] == "single"
    assert list(tta["documents"]) == ["hb-kestrel-travel", "hb-kestrel-leave"] and tta["documents_total"] == 2
    for doc, f in tta["documents"].items():
        assert f["upload_to_publish_seconds"] > 0, (doc, f)
        assert f["seconds"] in (None, f["upload_to_publish_seconds"]) and 0 <= f["right"] <= f["questions"]
    assert 0 <= tta["answerable_documents"] <= 2


def test_harness_on_a_handbook_slice_with_updates_then_reruns(tmp_path, model_dir, monkeypatch):
    settings = make_settings(tmp_path, model_dir, train=TRAIN, reflect=REFLECT)
    work = tmp_path / "eval-work"
    out = tmp_path / "out"
    cfg = EvalConfig(
        dataset=HANDBOOK,
        out=out,
        max_docs=2,  # the travel and leave policies: every kind has a question on them
        max_per_kind=1,
        max_doc_words=40,  # a few sentences per document: reflection and training stay small on 2 CPU cores
        top_k=2,
        max_tokens=16,
        work_dir=work,
        judge=LLMRole(model=str(model_dir)),
        command="pytest",
    )
    results = run_eval(settings, cfg)
    print((out / "results.md").read_text())

    assert {p.name for p in out.iterdir()} >= FILES
    for name in ("accuracy.png", "cost.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results, default=str))
    bench = results["benchmark"]
    assert bench["documents"] == 2 and bench["questions"] == 4 and bench["kinds"] == dict.fromkeys(KINDS, 1)
    assert bench["updates"] == 1 and bench["changes"] == 1
    assert list(results["methods"]) == list(METHODS)
    coll = results["collection"]
    assert not coll["reused"] and coll["reflections"] > 0 and coll["ingest_seconds"] > 0
    assert set(coll["stage_seconds"]) == {"parse", "reflect", "train", "evaluate", "publish"}
    assert "gate" in coll["metrics"]  # the evaluate stage ran and recorded its figures
    assert results["machine"]["cpus"] and results["models"]["executive"] == str(model_dir)
    assert results["settings"]["train"]["max_steps"] == 2 and results["command"] == "pytest"
    assert results["settings"]["updates"] is True and results["settings"]["max_per_kind"] == 1

    for method, fig in results["methods"].items():
        assert fig["questions"] == 4 and fig["errors"] == 0, (method, fig)
        for k in ("em", "f1", "rouge_l", "judge"):
            assert 0.0 <= fig[k] <= 100.0, (method, k, fig)
        assert fig["tokens"] > 0 and fig["prompt_tokens"] > fig["completion_tokens"] >= 0, (method, fig)
        assert fig["wall_seconds"] > 0
        assert 0 <= fig["judge_unparsed"] <= 4  # a 135M judge may not answer CORRECT/INCORRECT: counted as wrong
    figs = results["methods"]
    assert figs["memory-only"]["calls_per_question"] == 1.0 and figs["closed-book"]["calls_per_question"] == 1.0
    assert figs["memo"]["calls_per_question"] >= 1  # the Memory first; a plan and more when it is not supported
    # reading passages costs more prompt tokens than the bare question
    assert figs["gold"]["prompt_tokens"] > figs["closed-book"]["prompt_tokens"]
    assert figs["bm25"]["prompt_tokens"] > figs["closed-book"]["prompt_tokens"]
    _check_handbook_figures(results, coll)

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    main = [r for r in records if r["phase"] == "main"]
    assert len(main) == 4 * len(METHODS)
    for r in main:
        assert r["answers"] and r["judge"] in (0.0, 1.0, None) and isinstance(r["judge_raw"], str)
        assert set(r["scores"]) == {"em", "f1", "rouge_l"} and r["kind"] in KINDS and r["doc_ids"]
        assert isinstance(r["abstained"], bool) and isinstance(r["correct"], bool)
        assert r["abstained_by"] == ("service" if r["method"] == "memo" else "text")
    memo_records = [r for r in main if r["method"] == "memo"]
    assert all(r["memory_version"] == coll["version_id"] and r["trace"] for r in memo_records)
    assert all(isinstance(r["sources"], list) for r in memo_records)
    for r in memo_records:  # sources name benchmark documents of the corpus
        assert {s["doc_id"] for s in r["sources"]} <= {"hb-kestrel-travel", "hb-kestrel-leave"}, r["sources"]
    assert all(len(r["retrieved"]) == 2 for r in main if r["method"] == "dense")
    bm25 = [len(r["retrieved"]) for r in main if r["method"] == "bm25"]  # passages sharing a word with the question
    assert all(n <= 2 for n in bm25) and any(bm25)
    phases = {r["phase"] for r in records} - {"main"}
    assert phases == {"replace-pending", "replace", "replace-memory-only", "delete-pending", "delete"}
    for r in records:
        if r["phase"].startswith("replace"):
            assert r["stale_answers"] and isinstance(r["new"], bool) and isinstance(r["stale"], bool)
    replaced = results["updates"]["replaced"]["hb-kestrel-travel"]["version_id"]
    assert all(r["memory_version"] == replaced for r in records if r["phase"] == "replace")
    md = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in md
    for heading in ("| method | single acc |", "Executive keeps", "Sources of `memo`", "Updates (`memo`", "Deleted "):
        assert heading in md, heading
    assert "Time to answerable" in md

    # the rerun through the CLI: same corpus and memory settings, other methods -> no reflection or training
    for role in ("GENERATOR", "MEMORY", "EXECUTIVE"):
        monkeypatch.setenv(f"MEMO_{role}__MODEL", str(model_dir))
    monkeypatch.setenv("MEMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMO_TRAIN__MAX_STEPS", "2")
    monkeypatch.setenv("MEMO_TRAIN__BATCH_SIZE", "2")
    monkeypatch.setenv("MEMO_REFLECT__STAGES", "direct")
    monkeypatch.setenv("MEMO_REFLECT__DIRECT_VARIANTS", "1")
    out2 = tmp_path / "out2"
    args = ["eval", "--dataset", str(HANDBOOK), "--out", str(out2), "--max-docs", "2", "--max-per-kind", "1"]
    args += ["--max-doc-words", "40", "--max-tokens", "16", "--work-dir", str(work)]
    args += ["--methods", "memory-only,closed-book", "--compare", str(out / "results.json")]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "| memory-only |" in run.output
    again = json.loads((out2 / "results.json").read_text())
    assert again["collection"]["reused"] and again["collection"]["version_id"] == coll["version_id"]
    assert again["collection"]["ingest_seconds"] == 0.0 and again["collection"]["stage_seconds"] == {}
    assert list(again["methods"]) == ["memory-only", "closed-book"]
    assert again["methods"]["memory-only"]["judge"] is None  # no judge asked this time
    assert again["updates"] is None and again["sources"] is None  # no memo: no update run, no sources
    assert again["time_to_answerable"] is None and again["executive_keeps"] is None
    assert set(again["comparison"]["delta"]) == {"memory-only", "closed-book"}
    for delta in again["comparison"]["delta"].values():
        assert {"em", "f1", "rouge_l"} <= set(delta) and all(-100 <= delta[k] <= 100 for k in ("em", "f1", "rouge_l"))
        assert set(delta["by_kind"]) == set(KINDS)
    assert again["command"].startswith("memo eval --dataset") and "--max-per-kind 1" in again["command"]
    assert {p.name for p in out2.iterdir()} >= FILES

    # a benchmark without kinds or updates (NarrativeQA), with baselines that need no memory: one kind, "all"
    out3 = tmp_path / "out3"
    args = ["eval", "--dataset", str(DATA / "narrativeqa_dev"), "--out", str(out3), "--max-docs", "1"]
    args += ["--max-questions", "2", "--max-doc-words", "60", "--max-tokens", "16", "--work-dir", str(work)]
    args += ["--methods", "closed-book,bm25"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    nqa = json.loads((out3 / "results.json").read_text())
    assert "kinds" not in nqa["benchmark"] and "updates" not in nqa["benchmark"]
    for method, fig in nqa["methods"].items():
        assert list(fig["by_kind"]) == ["all"] and fig["by_kind"]["all"]["questions"] == 2, method
        assert _share(fig["by_kind"]["all"]["accuracy"]) and fig["abstention"]["unanswerable"] is None
    assert nqa["updates"] is None and nqa["collection"] is None
    assert "| closed-book | all | 2 |" in (out3 / "results.md").read_text()
