"""Tables and a plot from the MQAR runs: ``python -m benchmarks.core.mqar_report [results/core/mqar.jsonl]``.

Writes ``mqar.md`` (best accuracy over the learning rates and training lengths tried, and every run) and
``mqar.png`` next to the input.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

MODELS = [
    "attention",
    "mosaics",
    "atlas",
    "atlas_nopoly",
    "atlas_c1",
    "atlas_nopoly_c1",
    "atlas_ns",
    "linear_attention",
]


TITLES = {
    "none": "trained on the tested setting alone",
    "zoology": "one model per run trained on zoology's pool (64:4 x100k, 128:8/256:16/256:32/256:64 x20k), tested "
    "on each setting",
}

SHORT_TITLES = {"none": "trained on the tested setting alone", "zoology": "trained on zoology's pool"}

Cell = tuple[str, int, int, int]  # model, L, D, width


class Table(NamedTuple):
    best: dict[Cell, dict]  # the best run per cell
    tags: dict[Cell, list[str]]  # every run's lr/steps[/Nh][/seedN]:accuracy per cell
    cols: list[tuple[int, int, int]]  # (L, D, width), by width then length
    models: list[str]  # in MODELS order


def best_runs(runs: list[dict]) -> Table:
    """The best run per cell, every run's tag per cell, and the table's columns and rows."""
    best: dict[Cell, dict] = {}
    tags: dict[Cell, list[str]] = defaultdict(list)
    for r in runs:
        key = (r["model"], r["seq_len"], r["n_pairs"], r["d_model"])
        heads = r["mixer_config"]["n_heads"]
        tag = "" if heads == max(1, r["d_model"] // 16) else f"/{heads}h"  # heads other than the head-dim-16 default
        if r.get("seed", 0):
            tag += f"/seed{r['seed']}"
        tags[key].append(f"{r['lr']:.0e}/{r['steps']}{tag}:{r['accuracy']:.2f}")
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    cols = sorted({(k[1], k[2], k[3]) for k in best}, key=lambda c: (c[2], c[0]))
    return Table(best, tags, cols, [m for m in MODELS if any(k[0] == m for k in best)])


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/core/mqar.jsonl")
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # one table per regime: how the model was trained and the vocabulary size
    regimes = sorted(
        {(r.get("train_mix", "none"), r["vocab"]) for r in runs}, key=lambda g: (list(TITLES).index(g[0]), g[1])
    )
    tables = {g: best_runs([r for r in runs if (r.get("train_mix", "none"), r["vocab"]) == g]) for g in regimes}
    lines = []
    for mix, vocab in regimes:
        best, tags, cols, models = tables[(mix, vocab)]
        lines += [
            f"MQAR test accuracy, vocabulary {vocab}, {TITLES[mix]} "
            "(best over the runs; cell: accuracy [lr/steps:acc for each run; "
            "/Nh: N heads instead of one per 16 of width])",
            "",
            "| model | " + " | ".join(f"(L={c[0]}, D={c[1]}) width {c[2]}" for c in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for m in models:
            cells = []
            for c in cols:
                r = best.get((m, *c))
                cells.append("-" if r is None else f"**{r['accuracy']:.3f}** [{', '.join(tags[(m, *c)])}]")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    header = (
        "| model | vocab | L | D | width | heads | trained on | lr | steps x batch | seed | accuracy | skipped "
        "| train s |"
    )
    lines += ["Every run:", "", header]
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['vocab']} | {r['seq_len']} | {r['n_pairs']} | {r['d_model']} | "
            f"{r['mixer_config']['n_heads']} | "
            f"{'this setting' if r.get('train_mix', 'none') == 'none' else r['train_mix'] + ' pool'} | "
            f"{r['lr']:.0e} | {r['steps']} x {r['batch']} | {r.get('seed', 0)} | {r['accuracy']:.3f} | "
            f"{r.get('skipped_nonfinite_steps', '-')} | {r['train_seconds']} |"
        )
    out = path.with_name("mqar.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(len(regimes), 1, figsize=(10, 4 * len(regimes)), squeeze=False)
    for ax, (mix, vocab) in zip(axes[:, 0], regimes, strict=True):
        best, _, cols, models = tables[(mix, vocab)]
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            xs = [j + i * width for j in range(len(cols))]
            ys = [best[(m, *c)]["accuracy"] if (m, *c) in best else 0.0 for c in cols]
            ax.bar(xs, ys, width=width, label=m, color=f"C{MODELS.index(m)}")  # one colour per model in every panel
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))])
        ax.set_xticklabels([f"L={c[0]} D={c[1]}\nwidth {c[2]}" for c in cols], fontsize=8)
        ax.set_ylabel("test accuracy (best run)")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.9, color="gray", ls=":", lw=1)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"MQAR on CPU (vocab {vocab}, batches of 32 fresh sequences): {SHORT_TITLES[mix]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path.with_name("mqar.png"), dpi=120)


if __name__ == "__main__":
    main()
