"""The evaluation harness end to end on a tiny slice of NarrativeQA, with the real packaged SmolLM2 in every role
(generator, memory, executive, judge): real ingestion and training, the real query path, real BM25 and MiniLM
retrieval; then a rerun through the CLI that must reuse the trained memory instead of training again."""

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

DATA = REPO.parent / "shared" / "data" / "narrativeqa_dev"
TRAIN = {"max_steps": 2, "batch_size": 2}
REFLECT = {"stages": ["direct"], "direct_variants": 1}  # the cheapest reflections: one question per stated fact
FILES = {"results.json", "results.md", "records.jsonl", "accuracy.png", "cost.png"}


def test_harness_runs_every_method_and_reuses_the_trained_memory(tmp_path, model_dir, monkeypatch):
    settings = make_settings(tmp_path, model_dir, train=TRAIN, reflect=REFLECT)
    work = tmp_path / "eval-work"
    out = tmp_path / "out"
    cfg = EvalConfig(
        dataset=DATA,
        out=out,
        max_docs=2,
        max_questions=2,
        max_doc_words=60,  # a few sentences per document: reflection and training stay small on 2 CPU cores
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
    assert results["benchmark"]["documents"] == 2 and results["benchmark"]["questions"] == 2
    assert list(results["methods"]) == list(METHODS)
    coll = results["collection"]
    assert not coll["reused"] and coll["reflections"] > 0 and coll["ingest_seconds"] > 0
    assert set(coll["stage_seconds"]) == {"parse", "reflect", "train", "evaluate", "publish"}
    assert "gate" in coll["metrics"]  # the evaluate stage ran and recorded its figures
    assert results["machine"]["cpus"] and results["models"]["executive"] == str(model_dir)
    assert results["settings"]["train"]["max_steps"] == 2 and results["command"] == "pytest"

    for method, fig in results["methods"].items():
        assert fig["questions"] == 2 and fig["errors"] == 0, (method, fig)
        for k in ("em", "f1", "rouge_l", "judge"):
            assert 0.0 <= fig[k] <= 100.0, (method, k, fig)
        assert fig["tokens"] > 0 and fig["prompt_tokens"] > fig["completion_tokens"] >= 0, (method, fig)
        assert fig["wall_seconds"] > 0
        assert 0 <= fig["judge_unparsed"] <= 2  # a 135M judge may not answer CORRECT/INCORRECT: counted as wrong
    figs = results["methods"]
    assert figs["memory-only"]["calls_per_question"] == 1.0 and figs["closed-book"]["calls_per_question"] == 1.0
    assert figs["memo"]["calls_per_question"] >= 3  # plan + at least one memory call + synthesis
    # reading passages costs more prompt tokens than the bare question
    assert figs["gold"]["prompt_tokens"] > figs["closed-book"]["prompt_tokens"]
    assert figs["bm25"]["prompt_tokens"] > figs["closed-book"]["prompt_tokens"]

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(METHODS)
    for r in records:
        assert r["answers"] and r["judge"] in (0.0, 1.0, None) and isinstance(r["judge_raw"], str)
        assert set(r["scores"]) == {"em", "f1", "rouge_l"}
    memo_records = [r for r in records if r["method"] == "memo"]
    assert all(r["memory_version"] == coll["version_id"] and r["trace"] for r in memo_records)
    assert all(len(r["retrieved"]) == 2 for r in records if r["method"] == "dense")
    assert all(1 <= len(r["retrieved"]) <= 2 for r in records if r["method"] == "bm25")  # passages sharing a word
    md = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in md

    # the rerun through the CLI: same corpus and memory settings, other methods -> no reflection or training
    for role in ("GENERATOR", "MEMORY", "EXECUTIVE"):
        monkeypatch.setenv(f"MEMO_{role}__MODEL", str(model_dir))
    monkeypatch.setenv("MEMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMO_TRAIN__MAX_STEPS", "2")
    monkeypatch.setenv("MEMO_TRAIN__BATCH_SIZE", "2")
    monkeypatch.setenv("MEMO_REFLECT__STAGES", "direct")
    monkeypatch.setenv("MEMO_REFLECT__DIRECT_VARIANTS", "1")
    out2 = tmp_path / "out2"
    args = ["eval", "--dataset", str(DATA), "--out", str(out2), "--max-docs", "2", "--max-questions", "2"]
    args += ["--max-doc-words", "60", "--max-tokens", "16", "--work-dir", str(work)]
    args += ["--methods", "memory-only,closed-book", "--compare", str(out / "results.json")]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "| memory-only |" in run.output
    again = json.loads((out2 / "results.json").read_text())
    assert again["collection"]["reused"] and again["collection"]["version_id"] == coll["version_id"]
    assert again["collection"]["ingest_seconds"] == 0.0 and again["collection"]["stage_seconds"] == {}
    assert list(again["methods"]) == ["memory-only", "closed-book"]
    assert again["methods"]["memory-only"]["judge"] is None  # no judge asked this time
    assert set(again["comparison"]["delta"]) == {"memory-only", "closed-book"}
    for delta in again["comparison"]["delta"].values():
        assert set(delta) == {"em", "f1", "rouge_l"} and all(-100 <= x <= 100 for x in delta.values())
    assert (
        again["command"].startswith("memo eval --dataset") and "--methods memory-only,closed-book" in again["command"]
    )
    assert {p.name for p in out2.iterdir()} >= FILES
