"""The harness's outputs: per-method figures from per-question records, results.json, results.md, records.jsonl and
matplotlib plots (accuracy per method; accuracy against cost in tokens and in wall time).

Figures of the whole run (``methods[m]``: em, f1, rouge_l, judge) are in %, as they always were; the per-kind,
abstention, sources, updates and "executive keeps" figures are shares in [0, 1] (the issue's targets are written so).
Records carry a ``phase``: ``main`` (every method on the benchmark's questions: the only records the per-method
figures count) or a phase of the update run (:data:`UPDATE_PHASES`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.dataset import KINDLESS
from benchmarks.metrics import UNANSWERABLE, abstains, correct, states_any

log = logging.getLogger(__name__)

METRICS = ("em", "f1", "rouge_l", "judge")
LABELS = {"em": "EM", "f1": "F1", "rouge_l": "ROUGE-L", "judge": "judge"}
MAIN = "main"
# the update run (memo.harness -> benchmarks.updates): the changed questions asked while the replace job is queued
# and after it published (and of the Memory alone after it), the deleted document's questions likewise
UPDATE_PHASES = ("replace-pending", "replace", "replace-memory-only", "delete-pending", "delete")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def main_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("phase", MAIN) == MAIN]


def abstained(r: dict[str, Any]) -> bool:
    """A record's abstention: the service's structured flag, or the textual detector (records of older runs too)."""
    if r.get("error"):
        return False
    if r.get("abstained") is not None:
        return bool(r["abstained"])
    return abstains(r.get("prediction", ""))


def is_correct(r: dict[str, Any]) -> bool:
    if r.get("error"):
        return False
    if r.get("correct") is not None:
        return bool(r["correct"])
    return correct(r.get("prediction", ""), r["answers"], r.get("kind", KINDLESS), abstained(r))


def by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind (in order of appearance): questions, accuracy, EM, F1 and the share abstained (on ``unanswerable``
    the right answer; on the other kinds a wrong one), shares in [0, 1]."""
    kinds = list(dict.fromkeys(r.get("kind", KINDLESS) for r in rows))
    out: dict[str, dict[str, Any]] = {}
    for k in kinds:
        group = [r for r in rows if r.get("kind", KINDLESS) == k]
        fig: dict[str, Any] = {
            "questions": len(group),
            "accuracy": _share([is_correct(r) for r in group]),
            "em": round(_mean([r["scores"]["em"] for r in group]) or 0.0, 4),
            "f1": round(_mean([r["scores"]["f1"] for r in group]) or 0.0, 4),
            "abstained": _share([abstained(r) for r in group]),
        }
        judged = [r.get("judge") or 0.0 for r in group if r.get("judge_raw") is not None]
        if judged:
            fig["judge"] = round(sum(judged) / len(judged), 4)
        out[k] = fig
    return out


def abstention(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The share abstained on ``unanswerable`` questions (right) and on the others (wrong)."""
    unanswerable = [abstained(r) for r in rows if r.get("kind") == UNANSWERABLE]
    answerable = [abstained(r) for r in rows if r.get("kind") != UNANSWERABLE]
    return {"unanswerable": _share(unanswerable), "answerable": _share(answerable)}


def summarise(records: list[dict[str, Any]], methods: list[str], wall: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per method: mean of each metric (in %), tokens and calls in all and per question, wall seconds; ``by_kind``
    and ``abstention`` shares. Only the ``main`` phase's records count."""
    out: dict[str, dict[str, Any]] = {}
    records = main_records(records)
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        n = len(rows)
        fig: dict[str, Any] = {"questions": n, "errors": sum(1 for r in rows if r.get("error"))}
        for k in ("em", "f1", "rouge_l"):
            v = _mean([r["scores"][k] for r in rows])
            fig[k] = round(100 * v, 2) if v is not None else None
        judged = [r.get("judge") or 0.0 for r in rows if r.get("judge_raw") is not None]  # unparsed verdict = wrong
        fig["judge"] = round(100 * sum(judged) / len(judged), 2) if judged else None
        fig["judge_unparsed"] = sum(1 for r in rows if r.get("judge_raw") is not None and r.get("judge") is None)
        for k in ("prompt_tokens", "completion_tokens", "tokens", "calls"):
            total = sum(int(r["cost"][k]) for r in rows)
            fig[k] = total
            fig[f"{k}_per_question"] = round(total / n, 1) if n else None
        fig["wall_seconds"] = round(wall.get(m, 0.0), 2)
        fig["seconds_per_question"] = round(_mean([r["seconds"] for r in rows]) or 0.0, 2)
        fig["by_kind"] = by_kind(rows)
        fig["abstention"] = abstention(rows)
        out[m] = fig
    return out


def executive_keeps(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """On the questions ``memory-only`` answers right, the share ``memo`` answers right too (the Executive must not
    lose what the Memory knew); and how many ``memo`` gets right that ``memory-only`` does not. None unless both
    answered."""
    rows = main_records(records)
    memo = {r["qid"]: is_correct(r) for r in rows if r["method"] == "memo"}
    alone = {r["qid"]: is_correct(r) for r in rows if r["method"] == "memory-only"}
    both = [q for q in alone if q in memo]
    if not both:
        return None
    known = [q for q in both if alone[q]]
    return {
        "questions": len(both),
        "memory_only_right": len(known),
        "memo_also_right": sum(memo[q] for q in known),
        "share": _share([memo[q] for q in known]),
        "memo_right_memory_only_wrong": sum(memo[q] and not alone[q] for q in both),
    }


def _source_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    include = [bool(set(r["doc_ids"]) & {s["doc_id"] for s in r.get("sources") or []}) for r in rows]
    returned = [s["doc_id"] in r["doc_ids"] for r in rows for s in r.get("sources") or []]
    return {
        "questions": len(rows),
        "include": _share(include),  # the question's document is among the sources
        "precision": _share(returned),  # of all source documents returned, the share that are the question's
        "with_sources": _share([bool(r.get("sources")) for r in rows]),
    }


def sources(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``memo``'s sources on the questions it answered (did not abstain on): on ``single`` questions when the data
    has them (else on every answerable question), whether the question's document is among the returned sources
    (``include``) and the share of returned source documents that are the question's (``precision``); the same on
    the questions it answered right (``on_correct``) and per kind. None unless ``memo`` answered with sources."""
    rows = [r for r in main_records(records) if r["method"] == "memo" and "sources" in r and not r.get("error")]
    if not rows:
        return None
    answered = [r for r in rows if not abstained(r) and r.get("kind") != UNANSWERABLE]
    kinds = list(dict.fromkeys(r.get("kind", KINDLESS) for r in answered))
    headline = "single" if any(r.get("kind") == "single" for r in rows) else None
    chosen = [r for r in answered if headline is None or r.get("kind") == headline]
    return {
        "kind": headline or "answerable",
        "answered_share": _share([not abstained(r) for r in rows if headline is None or r.get("kind") == headline]),
        **_source_figures(chosen),
        "on_correct": _source_figures([r for r in chosen if is_correct(r)]),
        "by_kind": {k: _source_figures([r for r in answered if r.get("kind", KINDLESS) == k]) for k in kinds},
    }


def _change_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "questions": len(rows),
        "new": _share([not r.get("error") and states_any(r["prediction"], r["answers"]) for r in rows]),
        "stale": _share([not r.get("error") and states_any(r["prediction"], r["stale_answers"]) for r in rows]),
        "abstained": _share([abstained(r) for r in rows]),
    }


def _delete_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "questions": len(rows),
        "still_answered": _share([not abstained(r) and is_correct(r) for r in rows]),  # the deleted fact, stated
        "answered": _share([not r.get("error") and not abstained(r) for r in rows]),  # anything but an abstention
    }


def update_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of the update run's phases: the changed questions (new value stated, stale value stated, abstained)
    while the replace job was queued (``pending``), after it published (``after``) and of the Memory alone after it
    (``memory_only_after``); the deleted document's ``single`` questions still answered with its facts while its
    remove job was queued and after it published."""
    phase = {p: [r for r in records if r.get("phase") == p] for p in UPDATE_PHASES}
    out: dict[str, Any] = {
        "pending": _change_figures(phase["replace-pending"]),
        "after": _change_figures(phase["replace"]),
    }
    if phase["replace-memory-only"]:
        out["memory_only_after"] = _change_figures(phase["replace-memory-only"])
    if phase["delete-pending"] or phase["delete"]:
        out["delete"] = {"pending": _delete_figures(phase["delete-pending"]), "after": _delete_figures(phase["delete"])}
    return out


def compare(current: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Change of every metric per method present in both runs (current - previous, points), and of the per-kind
    shares where both runs have them."""
    delta: dict[str, dict[str, Any]] = {}
    for m, fig in current.items():
        if m not in previous:
            continue
        delta[m] = {
            k: round(fig[k] - previous[m][k], 2)
            for k in METRICS
            if fig.get(k) is not None and previous[m].get(k) is not None
        }
        kinds = {}
        for kind, now in (fig.get("by_kind") or {}).items():
            before = (previous[m].get("by_kind") or {}).get(kind)
            if before:
                kinds[kind] = {
                    k: round(now[k] - before[k], 4)
                    for k in ("accuracy", "f1", "abstained")
                    if now.get(k) is not None and before.get(k) is not None
                }
        if kinds:
            delta[m]["by_kind"] = kinds
    return delta


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        repo = Path(__file__).resolve().parents[2]
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    methods: dict[str, dict[str, Any]] = results["methods"]
    bench = results["benchmark"]
    lines = [
        f"# {bench['name']}: {bench['questions']} questions, {bench['documents']} documents "
        f"({bench['distractor_documents']} distractors)",
        "",
        f"Executive `{results['models']['executive']}`, memory `{results['models']['memory']}`; "
        f"scores in % (best over reference answers, SQuAD normalisation); tokens = prompt + completion of every "
        f"LLM call per question; wall = seconds to answer all questions (setup = one-time indexing or ingestion).",
        "",
        "| method | EM | F1 | ROUGE-L | judge | errors | tokens/q | calls/q | wall s | s/q | setup s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, f in methods.items():
        setup = results.get("setup_seconds", {}).get(m)
        lines.append(
            f"| {m} | {_fmt(f['em'])} | {_fmt(f['f1'])} | {_fmt(f['rouge_l'])} | {_fmt(f['judge'])} | {f['errors']} | "
            f"{_fmt(f['tokens_per_question'], 0)} | {_fmt(f['calls_per_question'], 1)} | "
            f"{_fmt(f['wall_seconds'], 1)} | "
            f"{_fmt(f['seconds_per_question'], 1)} | {_fmt(setup, 1)} |"
        )
    lines += _kind_tables(methods)
    if results.get("comparison"):
        comp = results["comparison"]
        lines += [
            "",
            f"Change against `{comp['against']}` (points, this run minus that one):",
            "",
            "| method | EM | F1 | ROUGE-L | judge |",
            "|---|---|---|---|---|",
        ]
        for m, d in comp["delta"].items():
            lines.append(
                f"| {m} | {_fmt(d.get('em'))} | {_fmt(d.get('f1'))} | {_fmt(d.get('rouge_l'))} | "
                f"{_fmt(d.get('judge'))} |"
            )
    coll = results.get("collection")
    if coll:
        ingest = "reused from the cache" if coll["reused"] else f"{coll['ingest_seconds']:.1f} s"
        left_out = coll.get("documents_not_learned")
        lines += [
            "",
            f"Memory: collection `{coll['name']}`, version `{coll['version_id']}`, {coll['reflections']} reflections; "
            f"ingestion {ingest}"
            + (f"; {left_out} document(s) yielded no reflection and were left out." if left_out else "."),
        ]
    lines += _trust_tables(results)
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def _share_fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}"


def _kind_tables(methods: dict[str, dict[str, Any]]) -> list[str]:
    """Accuracy per kind (the headline, one row per method), then every per-kind figure."""
    kinds = list(dict.fromkeys(k for f in methods.values() for k in f.get("by_kind") or {}))
    if not kinds:
        return []
    answerable = [k for k in kinds if k != UNANSWERABLE]
    head = [f"{k} acc" for k in answerable] + (["unanswerable: abstained"] if UNANSWERABLE in kinds else [])
    lines = [
        "",
        "Per kind (shares 0-1; accuracy: the answer states a reference answer, normalised reference inside the "
        "normalised answer, or token F1 >= 0.5 with every number of the reference; on `unanswerable`, that it "
        "abstained; abstention: `memo`'s `abstained` flag, a textual detector of declining answers for the other "
        "methods):",
        "",
        "| method | " + " | ".join(head) + " | wrongly abstained (answerable) |",
        "|---|" + "---|" * (len(head) + 1),
    ]
    for m, f in methods.items():
        bk = f.get("by_kind") or {}
        cells = [_share_fmt((bk.get(k) or {}).get("accuracy")) for k in answerable]
        if UNANSWERABLE in kinds:
            cells.append(_share_fmt((bk.get(UNANSWERABLE) or {}).get("abstained")))
        cells.append(_share_fmt((f.get("abstention") or {}).get("answerable")))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| method | kind | questions | accuracy | EM | F1 | abstained |", "|---|---|---|---|---|---|---|"]
    for m, f in methods.items():
        for k, g in (f.get("by_kind") or {}).items():
            lines.append(
                f"| {m} | {k} | {g['questions']} | {_share_fmt(g['accuracy'])} | {_share_fmt(g['em'])} | "
                f"{_share_fmt(g['f1'])} | {_share_fmt(g['abstained'])} |"
            )
    return lines


def _trust_tables(results: dict[str, Any]) -> list[str]:
    """Executive keeps, sources, updates and time to answerable, where the run has them."""
    lines: list[str] = []
    keeps = results.get("executive_keeps")
    if keeps:
        lines += [
            "",
            f"Executive keeps: on the {keeps['memory_only_right']} questions `memory-only` answers right, `memo` "
            f"answers {keeps['memo_also_right']} right (share {_share_fmt(keeps['share'])}); `memo` right where "
            f"`memory-only` is wrong: {keeps['memo_right_memory_only_wrong']}.",
        ]
    src = results.get("sources")
    if src:
        lines += [
            "",
            f"Sources of `memo`'s answers (questions it did not abstain on; `{src['kind']}` questions answered: "
            f"{_share_fmt(src['answered_share'])}): include = the question's document is among the sources, "
            "precision = share of the returned source documents that are the question's.",
            "",
            "| `memo`'s answers to | questions | include | precision | with sources |",
            "|---|---|---|---|---|",
        ]
        rows = [(f"{src['kind']}", src), (f"{src['kind']}, answered right", src["on_correct"])]
        rows += [(k, f) for k, f in src.get("by_kind", {}).items() if k != src["kind"]]
        for label, f in rows:
            lines.append(
                f"| {label} | {f['questions']} | {_share_fmt(f['include'])} | {_share_fmt(f['precision'])} | "
                f"{_share_fmt(f['with_sources'])} |"
            )
    upd = results.get("updates")
    if upd and upd.get("error"):
        lines += ["", f"The update run failed: {upd['error']}"]
    elif upd:
        lines += [
            "",
            f"Updates (`memo`, update mode `{upd.get('mode')}`, on a copy `{upd.get('collection')}` of the trained "
            "collection): the revised documents through the replace path (`PUT .../documents/{id}`), the changed "
            "questions asked while the replace job was queued and after it published.",
            "",
            "| when | questions | new value | stale value | abstained |",
            "|---|---|---|---|---|",
        ]
        for key, label in (
            ("pending", "replace job queued"),
            ("after", "after the replace job"),
            ("memory_only_after", "memory-only, after"),
        ):
            f = upd.get(key)
            if f:
                lines.append(
                    f"| {label} | {f['questions']} | {_share_fmt(f['new'])} | {_share_fmt(f['stale'])} | "
                    f"{_share_fmt(f['abstained'])} |"
                )
        for doc, r in (upd.get("replaced") or {}).items():
            err = f", error: {r['error']}" if r.get("error") else ""
            lines.append(f"\nReplaced `{doc}`: upload to published version {_fmt(r.get('seconds'), 1)} s{err}.")
        dele = upd.get("delete")
        if dele:
            err = f", error: {dele['error']}" if dele.get("error") else ""
            lines += [
                "",
                f"Deleted `{dele.get('doc_id')}` (`DELETE .../documents/{{id}}`, remove job "
                f"{_fmt(dele.get('seconds'), 1)} s{err}); its `single` questions:",
                "",
                "| when | questions | still answered (its fact stated) | answered at all (not abstained) |",
                "|---|---|---|---|",
            ]
            for key, label in (("pending", "remove job queued"), ("after", "after the remove job")):
                f = dele.get(key)
                if f:
                    lines.append(
                        f"| {label} | {f['questions']} | {_share_fmt(f['still_answered'])} | "
                        f"{_share_fmt(f['answered'])} |"
                    )
    tta = results.get("time_to_answerable")
    if tta and tta.get("documents"):
        lines += [
            "",
            f"Time to answerable (upload to the published version `{tta.get('version_id')}`; a batch ingestion "
            f"publishes one version for all its documents): {tta['answerable_documents']} of "
            f"{tta['documents_total']} documents answered (a `{tta['kind']}` question of theirs right), mean "
            f"{_fmt(tta.get('mean_seconds'), 1)} s, max {_fmt(tta.get('max_seconds'), 1)} s.",
            "",
            "| document | questions | right | upload to publish s | answerable after s |",
            "|---|---|---|---|---|",
        ]
        for doc, f in tta["documents"].items():
            lines.append(
                f"| {doc} | {f['questions']} | {f['right']} | {_fmt(f['upload_to_publish_seconds'], 1)} | "
                f"{_fmt(f['seconds'], 1)} |"
            )
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, dict[str, Any]] = results["methods"]
    names = list(methods)
    shown = [k for k in METRICS if any(methods[m].get(k) is not None for m in names)]
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.2))
    width = 0.8 / max(len(shown), 1)
    for j, k in enumerate(shown):
        xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [methods[m].get(k) or 0.0 for m in names], width, label=LABELS[k])
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("score (%)")
    ax.set_title(f"{results['benchmark']['name']}: accuracy per method ({results['benchmark']['questions']} questions)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    key = "judge" if "judge" in shown else "f1"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (cost, label) in zip(
        axes,
        [("tokens_per_question", "tokens per question"), ("seconds_per_question", "wall seconds per question")],
        strict=True,
    ):
        for m in names:
            x, y = methods[m].get(cost) or 0.0, methods[m].get(key) or 0.0
            ax.scatter([x], [y], s=40)
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{LABELS[key]} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results['benchmark']['name']}: accuracy against cost")
    fig.tight_layout()
    paths.append(out / "cost.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def combine(runs: list[Path], out: Path, keep: dict[Path, set[str]] | None = None) -> dict[str, Any]:
    """One report from runs of the same benchmark and Executive that answered different methods (e.g. the baselines
    while the memory was still training), written to ``out``. ``keep``: of a run, only these methods (the others it
    answered are left out, with its memory's figures when no memory method is kept). Refuses runs that differ in
    corpus, questions or Executive, or that answered a kept method twice."""
    from benchmarks.baselines import MEMORY_METHODS, METHODS
    from memo.errors import InvalidInput

    if len(runs) < 2:
        raise InvalidInput("combine needs at least two result folders")
    loaded = []
    for run in runs:
        path = run / "results.json"
        if not path.is_file() or not (run / "records.jsonl").is_file():
            raise InvalidInput(f"{run} holds no results.json and records.jsonl of a memo eval run")
        results = json.loads(path.read_text())
        records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
        only = (keep or {}).get(run)
        if only is not None:
            missing = sorted(only - set(results["methods"]))
            if missing:
                raise InvalidInput(f"{run} did not answer {', '.join(missing)}")
            results["methods"] = {m: f for m, f in results["methods"].items() if m in only}
            results["setup_seconds"] = {m: v for m, v in results.get("setup_seconds", {}).items() if m in only}
            records = [r for r in records if r["method"] in only]
            if not only & MEMORY_METHODS:
                for key in ("collection", "updates", "time_to_answerable"):
                    results[key] = None
        loaded.append((run, results, records))
    first = loaded[0][1]
    for run, results, _ in loaded[1:]:
        for what, get in (
            ("benchmark", lambda r: r["benchmark"]),
            ("executive", lambda r: r["models"]["roles"]["executive"]),
        ):
            here, there = get(results), get(first)
            if what == "benchmark":  # a run of an older harness lacks the newer summary keys
                here, there = ({k: d[k] for k in here.keys() & there.keys()} for d in (here, there))
            if here != there:
                raise InvalidInput(f"{run} differs from {loaded[0][0]} in its {what}; its figures are not comparable")
    answered = [m for _, results, _ in loaded for m in results["methods"]]
    twice = sorted({m for m in answered if answered.count(m) > 1})
    if twice:
        raise InvalidInput(f"method(s) answered in more than one run: {', '.join(twice)}")
    merged = {**first}
    merged["methods"] = {
        m: fig for m in METHODS for _, results, _ in loaded for k, fig in results["methods"].items() if k == m
    }
    merged["setup_seconds"] = {k: v for _, results, _ in loaded for k, v in results.get("setup_seconds", {}).items()}
    merged["collection"] = next((r["collection"] for _, r, _ in loaded if r.get("collection")), None)
    merged["settings"] = {**first["settings"], "methods": list(merged["methods"])}
    merged["command"] = " && ".join(r["command"] for _, r, _ in loaded)
    merged["combined_from"] = [{"run": str(run), "created_at": r["created_at"]} for run, r, _ in loaded]
    merged.pop("comparison", None)
    records = [rec for m in merged["methods"] for _, _, recs in loaded for rec in recs if rec["method"] == m]
    # figures of several methods are computed again on the merged records; those of the update run and of the
    # memory's ingestion come from the run that had them
    merged["executive_keeps"] = executive_keeps(records)
    merged["sources"] = sources(records)
    for key in ("updates", "time_to_answerable"):
        merged[key] = next((r[key] for _, r, _ in loaded if r.get(key)), None)
    write(out, merged, records)
    return merged


def rescore(run: Path) -> dict[str, Any]:
    """Score a finished run's answers again with the current scorer (benchmarks.metrics) and rewrite its figures in
    place; the answers, costs and timings are the run's own."""
    from memo.errors import InvalidInput

    path = run / "results.json"
    if not path.is_file() or not (run / "records.jsonl").is_file():
        raise InvalidInput(f"{run} holds no results.json and records.jsonl of a memo eval run")
    results = json.loads(path.read_text())
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
    for r in records:
        r["correct"] = not r.get("error") and correct(
            r.get("prediction", ""), r["answers"], r.get("kind", KINDLESS), abstained(r)
        )
        if "stale_answers" in r:
            r["new"] = not r.get("error") and states_any(r["prediction"], r["answers"])
            r["stale"] = not r.get("error") and states_any(r["prediction"], r["stale_answers"])
    rows = main_records(records)
    for m, fig in results["methods"].items():
        fig["by_kind"] = by_kind([r for r in rows if r["method"] == m])
        fig["abstention"] = abstention([r for r in rows if r["method"] == m])
    results["executive_keeps"] = executive_keeps(records)
    results["sources"] = sources(records)
    if results.get("updates"):
        for phase, figures in update_figures(records).items():  # the run's other figures of a phase are kept
            results["updates"][phase] = {**results["updates"].get(phase, {}), **figures}
    tta = results.get("time_to_answerable")
    if tta:
        memo_rows = [r for r in rows if r["method"] == "memo"]
        for doc_id, fig in tta["documents"].items():
            qs = [r for r in memo_rows if r["doc_ids"] == [doc_id] and r.get("kind", KINDLESS) == tta["kind"]]
            fig["right"] = sum(is_correct(r) for r in qs)
            fig["seconds"] = fig["upload_to_publish_seconds"] if fig["right"] else None
        answered = [f["seconds"] for f in tta["documents"].values() if f["seconds"] is not None]
        tta["answerable_documents"] = len(answered)
        tta["mean_seconds"] = round(sum(answered) / len(answered), 2) if answered else None
        tta["max_seconds"] = max(answered) if answered else None
    write(run, results, records)
    return results


def write(out: Path, results: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write every output file into ``out`` (``results`` gains the list of their names)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results.json": out / "results.json",
        "results.md": out / "results.md",
        "records.jsonl": out / "records.jsonl",
    }
    results["files"] = sorted([*files, "accuracy.png", "cost.png"])
    files["results.json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    files["results.md"].write_text(markdown(results))
    files["records.jsonl"].write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    for p in plots(results, out):
        files[p.name] = p
    return files
