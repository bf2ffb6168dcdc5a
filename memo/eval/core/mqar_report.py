"""Tables and a plot from the MQAR runs: ``python -m memo.eval.core.mqar_report [results/core/mqar.jsonl]``.

Writes ``mqar.md`` (best accuracy over the learning rates and training lengths tried, and every run) and
``mqar.png`` next to the input.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

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


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/core/mqar.jsonl")
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    best: dict[tuple[str, int, int, int], dict] = {}
    lrs: dict[tuple[str, int, int, int], list[str]] = defaultdict(list)
    for r in runs:
        key = (r["model"], r["seq_len"], r["n_pairs"], r["d_model"])
        heads = r["mixer_config"]["n_heads"]
        tag = "" if heads == max(1, r["d_model"] // 16) else f"/{heads}h"  # heads other than the head-dim-16 default
        if r.get("train_mix", "none") != "none":
            tag += f"/{r['train_mix']}"  # trained on a pool of settings, not on this one alone
        lrs[key].append(f"{r['lr']:.0e}/{r['steps']}{tag}:{r['accuracy']:.2f}")
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    cols = sorted({(k[1], k[2], k[3]) for k in best}, key=lambda c: (c[2], c[0]))
    models = [m for m in MODELS if any(k[0] == m for k in best)]
    lines = [
        "MQAR test accuracy (best over the runs; cell: accuracy [lr/steps:acc for each run; /Nh: N heads instead of "
        "one per 16 of width; /zoology: one model trained on zoology's pool of settings])",
        "",
        "| model | " + " | ".join(f"(L={c[0]}, D={c[1]}) width {c[2]}" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in models:
        cells = []
        for c in cols:
            r = best.get((m, *c))
            cells.append("-" if r is None else f"**{r['accuracy']:.3f}** [{', '.join(lrs[(m, *c)])}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    header = "| model | L | D | width | heads | trained on | lr | steps x batch | accuracy | skipped | train s |"
    lines += ["", "Every run:", "", header]
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['seq_len']} | {r['n_pairs']} | {r['d_model']} | {r['mixer_config']['n_heads']} | "
            f"{'this setting' if r.get('train_mix', 'none') == 'none' else r['train_mix'] + ' pool'} | "
            f"{r['lr']:.0e} | "
            f"{r['steps']} x {r['batch']} | {r['accuracy']:.3f} | {r.get('skipped_nonfinite_steps', '-')} | "
            f"{r['train_seconds']} |"
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
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols)), 4))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = [j + i * width for j in range(len(cols))]
        ys = [best[(m, *c)]["accuracy"] if (m, *c) in best else 0.0 for c in cols]
        ax.bar(xs, ys, width=width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))])
    ax.set_xticklabels([f"L={c[0]} D={c[1]}\nwidth {c[2]}" for c in cols], fontsize=8)
    ax.set_ylabel("test accuracy (best run)")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.9, color="gray", ls=":", lw=1)
    ax.legend(fontsize=8)
    ax.set_title("MQAR on CPU (vocab 512, batches of 32 fresh sequences)")
    fig.tight_layout()
    fig.savefig(path.with_name("mqar.png"), dpi=120)


if __name__ == "__main__":
    main()
