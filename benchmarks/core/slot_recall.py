"""Slot memory: recall from a 512-token context through 32 slots (16x compression) vs truncating it.

    python -m benchmarks.core.slot_recall --quick        # a smoke run
    python -m benchmarks.core.slot_recall                # writes results/core/slots.{json,md,png}

Task: a context of 512 tokens holds ``--pairs`` key-value pairs (key token immediately followed by its
value token) at random places among filler tokens; a separately encoded query is one of the keys and the
answer is its value. Vocabulary: 64 filler, 64 key and 64 value tokens. Three models share the encoder
(token embeddings, a linear map binding each token to its predecessor, a per-token MLP; no positions) and
the reader (the query's cross-attention block of :class:`LatentSlotMemory` + a value head); they differ in
what the query reads:
  - ``slots``: the 32 soft tokens of a LatentSlotMemory that read all 512 encoded tokens (16x compression);
  - ``truncate``: the last 32 encoded tokens only (the same budget of 32 vectors, by truncation);
  - ``full``: all 512 encoded tokens (no compression; the upper bound).
Training data is fresh every step (the first 60% walk a curriculum of shorter contexts, ``--curriculum``:
from scratch, a single lookup among 512 tokens sits on the associative-recall loss plateau for longer than
the CPU budget); the test set is a fixed set of full-length contexts x 4 queries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memo.core import LatentSlotMemory, SlotMemoryConfig

N_FILLER, N_KEYS, N_VALUES = 64, 64, 64
VOCAB = N_FILLER + N_KEYS + N_VALUES


def make_batch(
    rng: np.random.Generator, n: int, length: int, pairs: int, queries: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contexts (n, length), query keys (n, queries), answers (n, queries) as value indices."""
    ctx = rng.integers(0, N_FILLER, size=(n, length))
    keys = np.argsort(rng.random((n, N_KEYS)), axis=1)[:, :pairs]  # distinct keys per context
    values = rng.integers(0, N_VALUES, size=(n, pairs))
    # non-overlapping pair slots: choose `pairs` of the length // 2 even offsets
    offsets = np.sort(np.argsort(rng.random((n, length // 2)), axis=1)[:, :pairs], axis=1) * 2
    rows = np.arange(n)[:, None]
    ctx[rows, offsets] = N_FILLER + keys
    ctx[rows, offsets + 1] = N_FILLER + N_KEYS + values
    pick = np.argsort(rng.random((n, pairs)), axis=1)[:, :queries]
    q = np.take_along_axis(keys, pick, axis=1)
    a = np.take_along_axis(values, pick, axis=1)
    return torch.from_numpy(ctx), torch.from_numpy(N_FILLER + q), torch.from_numpy(a)


class RecallModel(nn.Module):
    def __init__(self, mode: str, d: int, length: int, n_slots: int, self_layers: int, write_scale: float) -> None:
        super().__init__()
        if mode not in ("slots", "truncate", "full"):
            raise ValueError(f"mode must be slots, truncate or full, got {mode!r}")
        self.mode, self.n_slots = mode, n_slots
        self.embed = nn.Embedding(VOCAB, d)
        self.bind = nn.Linear(2 * d, d)  # each token with its predecessor: a value token learns its key
        self.enc = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.query_enc = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.memory = LatentSlotMemory(
            SlotMemoryConfig(d_model=d, n_slots=n_slots, n_heads=4, n_self_layers=self_layers, write_scale=write_scale)
        )
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, N_VALUES))

    def forward(self, ctx: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        e = self.embed(ctx)  # (B, T, D)
        prev = F.pad(e, (0, 0, 1, 0))[:, :-1]  # (B, T, D) the preceding token (zeros at t = 0)
        x = self.bind(torch.cat([e, prev], dim=-1))  # (B, T, D) no positions: the task needs none
        x = x + self.enc(x)  # (B, T, D)
        if self.mode == "slots":
            memory, _ = self.memory(x)  # (B, k, D)
        elif self.mode == "truncate":
            memory = x[:, -self.n_slots :]  # (B, k, D)
        else:
            memory = x  # (B, T, D)
        q = self.embed(query)
        q = q + self.query_enc(q)  # (B, Q, D)
        return self.head(self.memory.read(q, memory))  # (B, Q, N_VALUES)


def accuracy(model: RecallModel, data: tuple[torch.Tensor, ...], batch: int = 200) -> float:
    ctx, q, a = data
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, ctx.shape[0], batch):
            correct += int((model(ctx[i : i + batch], q[i : i + batch]).argmax(-1) == a[i : i + batch]).sum())
    model.train()
    return correct / a.numel()


def train(mode: str, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    model = RecallModel(mode, args.width, args.length, args.slots, args.self_layers, args.write_scale)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(args.seed)
    test = make_batch(np.random.default_rng(12345), args.n_test, args.length, args.pairs, 4)
    curve = []
    t0 = time.time()
    stages = [int(v) for v in args.curriculum.split(",") if v] if args.curriculum else []
    for step in range(1, args.steps + 1):
        # curriculum: the first part of training walks through shorter contexts, then full length
        stage = int((step - 1) / (args.curriculum_frac * args.steps) * len(stages)) if stages else 0
        length = stages[stage] if stage < len(stages) else args.length
        ctx, q, a = make_batch(rng, args.batch, length, args.pairs, 4)
        loss = F.cross_entropy(model(ctx, q).flatten(0, 1), a.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, accuracy(model, test)))
            print(f"{mode:9s} step {step:5d} loss {loss.item():.3f} test acc {curve[-1][1]:.3f}", flush=True)
    return {
        "mode": mode,
        "accuracy": curve[-1][1],
        "curve": curve,
        "train_seconds": round(time.time() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="slots,truncate,full")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--self-layers", type=int, default=0, help="SlotMemoryConfig.n_self_layers")
    ap.add_argument("--write-scale", type=float, default=10.0, help="SlotMemoryConfig.write_scale")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--curriculum", default="64,128,256", help="shorter context lengths trained first")
    ap.add_argument("--curriculum-frac", type=float, default=0.6, help="share of the steps in the curriculum")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/core/slots")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.n_test, args.eval_every, args.out = 40, 200, 20, args.out + "_quick"
    results = [train(mode, args) for mode in args.modes.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick", "modes")}
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    chance = 1 / N_VALUES
    lines = [
        f"Recall of a value from a {args.length}-token context with {args.pairs} key-value pairs "
        f"({args.steps} steps x {args.batch} fresh contexts x 4 queries, "
        f"curriculum {args.curriculum or 'none'} over the first {args.curriculum_frac:.0%}, "
        f"width {args.width}, lr {args.lr}; chance {chance:.3f})",
        "",
        "| model | what the query reads | test accuracy | train s |",
        "|---|---|---|---|",
    ]
    what = {
        "slots": f"{args.slots} slots ({args.length // args.slots}x compression, {args.self_layers} self-attn layers)",
        "truncate": f"last {args.slots} tokens",
        "full": f"all {args.length} tokens",
    }
    for r in results:
        lines.append(f"| {r['mode']} | {what[str(r['mode'])]} | {r['accuracy']:.3f} | {r['train_seconds']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, accs = zip(*r["curve"], strict=True)  # type: ignore[arg-type,misc]
        ax.plot(steps, accs, marker="o", label=what[str(r["mode"])])
    ax.axhline(chance, color="gray", ls=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel("test recall accuracy")
    ax.set_title(f"recall through {args.slots} slots vs truncation ({args.length} tokens)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
