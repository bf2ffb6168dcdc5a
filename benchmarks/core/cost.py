"""Cost scaling of the memory layers against causal attention, from 512 to 16,384 tokens of context.

    python -m benchmarks.core.cost --quick          # 512 and 1,024 tokens only
    python -m benchmarks.core.cost                  # 512 ... 16,384; writes results/core/cost.{json,md,png}

Each (layer, length) is measured in a fresh subprocess: forward time (no grad, best of ``--repeats``, after a
warm-up pass) and peak memory (the growth of the process's peak RSS during the timed passes). Both are divided
by the number of tokens. Attention is ``F.scaled_dot_product_attention(is_causal=True)`` in one pass; the
recurrent layers run their parallel/chunked form in one pass; Memory Mosaics' context memory (whose read is
over all earlier pairs) is fed in pieces of 1,024 tokens and the windowed variant in pieces of its window, with
carried state, the way a long context is streamed. Width 64, 4 heads, batch 1, ``--threads`` threads (default
1). Peak memory is ru_maxrss after the timed passes minus the resident size before them, with glibc's mmap
threshold pinned at 64 KiB so freed tensors leave the resident set (it includes the layer's temporaries and its
output).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from memo.core import (
    AtlasConfig,
    AtlasMemory,
    CausalAttention,
    CausalAttentionConfig,
    ContextAssociativeMemory,
    ContextMemoryConfig,
    LatentSlotMemory,
    LinearAttention,
    LinearAttentionConfig,
    SlotMemoryConfig,
)

D, HEADS = 64, 4
# Memory Mosaics' short-term window (v2), in pairs: the longest MQAR context here (256), so the windowed layer
# recalls what the full one does on MQAR. It is streamed in pieces of the window: a piece of n tokens reads
# n x (window + n) pairs, so the cost per token is bounded from the first piece on
WINDOW = 256
LAYERS = [
    "attention",
    "linear_attention",
    "atlas",
    "atlas_mlp_ns",
    "mosaics",
    "mosaics_window",
    "slot_memory",
]


def build(name: str) -> tuple[nn.Module, int | None]:
    """The layer and the piece length it is streamed in (None: one pass)."""
    if name == "attention":
        return CausalAttention(CausalAttentionConfig(d_model=D, n_heads=HEADS)), None
    if name == "linear_attention":
        return LinearAttention(LinearAttentionConfig(d_model=D, n_heads=HEADS, chunk_size=64)), None
    if name == "atlas":
        cfg = AtlasConfig(d_model=D, n_heads=HEADS, poly_degree=2, omega_window=4, chunk_size=64)
        return AtlasMemory(cfg), None
    if name == "atlas_mlp_ns":
        cfg = AtlasConfig(d_model=D, n_heads=HEADS, memory="mlp", poly_degree=2, omega_window=4, chunk_size=64)
        cfg.newton_schulz = True
        return AtlasMemory(cfg), None
    if name == "mosaics":
        return ContextAssociativeMemory(ContextMemoryConfig(d_model=D, n_heads=HEADS)), 1024
    if name == "mosaics_window":
        return ContextAssociativeMemory(ContextMemoryConfig(d_model=D, n_heads=HEADS, window=WINDOW)), WINDOW
    if name == "slot_memory":
        return LatentSlotMemory(SlotMemoryConfig(d_model=D, n_slots=32, n_heads=HEADS)), None
    raise ValueError(f"unknown layer {name!r}")


def forward(layer: nn.Module, x: torch.Tensor, piece: int | None) -> None:
    if piece is None:
        layer(x)
        return
    state = None
    for chunk in x.split(piece, dim=1):
        _, state = layer(chunk, state)


def current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def measure_one(name: str, length: int, repeats: int) -> dict[str, float | str | int]:
    """Run inside the subprocess."""
    torch.manual_seed(0)
    layer, piece = build(name)
    layer.eval()
    with torch.no_grad():
        forward(layer, torch.randn(1, 64, D), piece)  # warm-up (small, so it leaves no big cached blocks)
        x = torch.randn(1, length, D)
        rss_before = current_rss_kib()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            forward(layer, x, piece)
            times.append(time.perf_counter() - t0)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = min(times)
    return {
        "layer": name,
        "tokens": length,
        "seconds": seconds,
        "us_per_token": 1e6 * seconds / length,
        "peak_mem_growth_mib": (rss_after - rss_before) / 1024,
        "bytes_per_token": 1024 * (rss_after - rss_before) / length,
    }


def crossover(att: dict[int, float], other: dict[int, float]) -> str:
    """First length where attention's time per token exceeds the layer's (log-interpolated)."""
    lengths = sorted(set(att) & set(other))
    if not lengths:
        return "n/a"
    diff = [math.log(att[n] / other[n]) for n in lengths]
    if diff[0] >= 0:
        return f"<= {lengths[0]}"
    for i in range(1, len(lengths)):
        (n0, d0), (n1, d1) = (lengths[i - 1], diff[i - 1]), (lengths[i], diff[i])
        if d1 >= 0:
            frac = -d0 / (d1 - d0)
            return f"~{round(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))))}"
    return f"> {lengths[-1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/core/cost")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "layer:length" measured in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        name, length = args.one.split(":")
        print(json.dumps(measure_one(name, int(length), args.repeats)))
        return
    if args.quick:
        args.lengths, args.out = "512,1024", args.out + "_quick"
    rows = []
    for name in args.layers.split(","):
        for length in (int(v) for v in args.lengths.split(",")):
            cmd = [sys.executable, "-m", "benchmarks.core.cost", "--one", f"{name}:{length}"]
            cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # big blocks go back to the OS when freed
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{name:18s} T={length:6d} {row['us_per_token']:9.1f} us/token "
                f"{row['bytes_per_token']:9.0f} B/token (peak +{row['peak_mem_growth_mib']:.0f} MiB)",
                flush=True,
            )
    write_report(rows, Path(args.out))


def write_report(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lengths = sorted({r["tokens"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    t = {(r["layer"], r["tokens"]): r["us_per_token"] for r in rows}
    m = {(r["layer"], r["tokens"]): r["bytes_per_token"] for r in rows}
    att = {n: t[("attention", n)] for n in lengths if ("attention", n) in t}
    summary = {}
    for name in layers:
        ts = {n: t[(name, n)] for n in lengths if (name, n) in t}
        summary[name] = {
            "time_ratio_last_vs_first": ts[max(ts)] / ts[min(ts)],
            "flat_within_1.5x": ts[max(ts)] / ts[min(ts)] <= 1.5,
            "crossover_vs_attention": crossover(att, ts) if name != "attention" else "-",
        }
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    head = "| layer | " + " | ".join(str(n) for n in lengths) + " | last/first | crossover |"
    lines = [
        "Forward time per token (microseconds), width 64, 4 heads, batch 1, 1 thread",
        "",
        head,
        "|" + "---|" * (len(lengths) + 3),
    ]
    for name in layers:
        cells = [f"{t[(name, n)]:.1f}" if (name, n) in t else "-" for n in lengths]
        s = summary[name]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {s['time_ratio_last_vs_first']:.2f}x | "
            f"{s['crossover_vs_attention']} |"
        )
    lines += ["", "Peak memory growth per token (bytes)", "", head.rsplit("| last", 1)[0] + "|"]
    lines.append("|" + "---|" * (len(lengths) + 1))
    for name in layers:
        cells = [f"{m[(name, n)]:.0f}" if (name, n) in m else "-" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in layers:
        ns = [n for n in lengths if (name, n) in t]
        axes[0].plot(ns, [t[(name, n)] for n in ns], marker="o", label=name)
        axes[1].plot(ns, [max(m[(name, n)], 1.0) for n in ns], marker="o", label=name)
    titles = ["forward time per token (us)", "peak memory growth per token (bytes)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
