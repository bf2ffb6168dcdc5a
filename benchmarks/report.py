"""The harness's outputs: per-method figures from per-question records, results.json, results.md, records.jsonl and
matplotlib plots (accuracy per method; accuracy against cost in tokens and in wall time)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS = ("em", "f1", "rouge_l", "judge")
LABELS = {"em": "EM", "f1": "F1", "rouge_l": "ROUGE-L", "judge": "judge"}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarise(records: list[dict[str, Any]], methods: list[str], wall: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per method: mean of each metric (in %), tokens and calls in all and per question, wall seconds."""
    out: dict[str, dict[str, Any]] = {}
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
        out[m] = fig
    return out


def compare(current: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Change of every metric per method present in both runs (current - previous, points)."""
    delta: dict[str, dict[str, Any]] = {}
    for m, fig in current.items():
        if m not in previous:
            continue
        delta[m] = {
            k: round(fig[k] - previous[m][k], 2)
            for k in METRICS
            if fig.get(k) is not None and previous[m].get(k) is not None
        }
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
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


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


def combine(runs: list[Path], out: Path) -> dict[str, Any]:
    """One report from runs of the same benchmark and Executive that answered different methods (e.g. the baselines
    while the memory was still training), written to ``out``. Refuses runs that differ in corpus, questions or
    Executive, or that answered a method twice."""
    from benchmarks.baselines import METHODS
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
        loaded.append((run, results, records))
    first = loaded[0][1]
    for run, results, _ in loaded[1:]:
        for what, get in (
            ("benchmark", lambda r: r["benchmark"]),
            ("executive", lambda r: r["models"]["roles"]["executive"]),
        ):
            if get(results) != get(first):
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
    write(out, merged, records)
    return merged


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
