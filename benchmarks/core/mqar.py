"""MQAR (multi-query associative recall, the zoology recipe) on CPU for the memory-layer core.

    python -m benchmarks.core.mqar --quick                  # a smoke run (seconds)
    python -m benchmarks.core.mqar --out results/core/mqar.json --steps 1500 ...

Data (zoology ``multiquery_ar``): vocabulary 8192, keys from the lower half, values from the upper half; a
sequence of length L starts with D key-value pairs, then the D keys are queried again at gaps drawn with p(g)
~ g^(a-1), a = 0.01, other positions hold random tokens; only the positions whose next token is a queried
value are scored. Training data is drawn fresh every step (no example is seen twice); the test set is a fixed
1,000 sequences per setting. By default a model is trained on the setting it is tested on; ``--train-mix
zoology`` trains one model on zoology's reproduction pool instead (100k examples of (64,4), 20k each of (128,8),
(256,16), (256,32), (256,64): each step's batch is one of them, drawn with those weights) and tests it on every
``--settings`` entry. Every run appends one JSON line per tested setting to ``--out`` (resumable: finished runs
are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memo.core import (
    AtlasConfig,
    CausalAttentionConfig,
    ContextMemoryConfig,
    LinearAttentionConfig,
    MemoryLM,
    MemoryLMConfig,
)
from memo.core.lm import MixerConfig

VOCAB = 8192  # the zoology vocabulary; --vocab overrides it (the CPU runs use 512, see README)
# zoology's MQAR reproduction train pool: (L, D, examples)
ZOOLOGY_POOL = ((64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000))


def mqar_batch(
    rng: np.random.Generator, n: int, seq_len: int, n_pairs: int, vocab: int = VOCAB, power_a: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, L) and labels (n, L) with -100 where nothing is scored (zoology's multiquery_ar)."""
    context = 2 * n_pairs
    if seq_len < 4 * n_pairs:
        raise ValueError(f"seq_len={seq_len} too short for {n_pairs} pairs (need >= {4 * n_pairs})")
    half = vocab // 2
    keys = np.argsort(rng.random((n, half - 1)), axis=1)[:, :n_pairs] + 1  # distinct keys in [1, half)
    values = np.argsort(rng.random((n, vocab - half)), axis=1)[:, :n_pairs] + half  # distinct values
    kvs = np.empty((n, context), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values
    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gumbel = -np.log(-np.log(rng.random((n, space))))
    gaps = np.argsort(-(np.log(p)[None] + gumbel), axis=1)[:, :n_pairs]  # sampling without replacement ~ p
    queries = np.zeros((n, seq_len - context + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)  # (n, L+1)
    labels = np.full((n, seq_len + 1), -100, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context + 1, values, axis=1)
    inputs = torch.from_numpy(examples[:, :-1].copy())
    targets = torch.from_numpy(labels[:, 1:].copy())
    noise = torch.from_numpy(rng.integers(0, vocab, size=inputs.shape))
    inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, targets


def mixer_config(name: str, d: int, head_dim: int = 16) -> MixerConfig:
    """The layer for a model name at width d, in heads of ``head_dim`` (16: 4 heads at width 64, 8 at 128)."""
    heads = max(1, d // head_dim)
    if name == "attention":
        return CausalAttentionConfig(d_model=d, n_heads=heads)
    if name == "linear_attention":
        return LinearAttentionConfig(d_model=d, n_heads=heads, chunk_size=64)
    if name == "mosaics":
        return ContextMemoryConfig(d_model=d, n_heads=heads, chunk_size=64)
    if name == "atlas":  # polynomial features p=2, Omega window c=4, momentum
        return AtlasConfig(d_model=d, n_heads=heads, poly_degree=2, omega_window=4, chunk_size=64)
    if name == "atlas_nopoly_c1":  # p=1, c=1: delta rule with momentum
        return AtlasConfig(d_model=d, n_heads=heads, poly_degree=1, omega_window=1, chunk_size=16)
    if name == "atlas_nopoly":  # p=1, c=4
        return AtlasConfig(d_model=d, n_heads=heads, poly_degree=1, omega_window=4, chunk_size=16)
    if name == "atlas_c1":  # p=2, c=1
        return AtlasConfig(d_model=d, n_heads=heads, poly_degree=2, omega_window=1, chunk_size=16)
    if name == "atlas_ns":  # p=2, c=4, momentum with Newton-Schulz
        return AtlasConfig(d_model=d, n_heads=heads, poly_degree=2, omega_window=4, chunk_size=16, newton_schulz=True)
    raise ValueError(f"unknown model {name!r}")


def evaluate(model: MemoryLM, inputs: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch):
            h, _ = model.hidden(inputs[i : i + batch])  # (B, L, D)
            lab = labels[i : i + batch]
            mask = lab != -100
            correct += int((model.head(h[mask]).argmax(-1) == lab[mask]).sum())
            total += int(mask.sum())
    model.train()
    return correct / max(total, 1)


def run(
    name: str,
    settings: list[tuple[int, int]],
    d: int,
    lr: float,
    steps: int,
    batch: int,
    seed: int,
    n_test: int,
    vocab: int = VOCAB,
    log_every: int = 0,
    head_dim: int = 16,
    train_mix: str = "none",
) -> list[dict[str, object]]:
    """Train one model and test it on each (L, D) of ``settings``: one record per setting.

    ``train_mix="none"`` trains on the single setting given; ``"zoology"`` on ZOOLOGY_POOL.
    """
    if train_mix == "none":
        if len(settings) != 1:
            raise ValueError("without a train mix a model is trained and tested on one setting")
        pool, weights = settings, np.ones(1)
    elif train_mix == "zoology":
        pool = [(seq_len, n_pairs) for seq_len, n_pairs, _ in ZOOLOGY_POOL]
        weights = np.array([n for _, _, n in ZOOLOGY_POOL], dtype=np.float64)
    else:
        raise ValueError(f"unknown train mix {train_mix!r}")
    weights = weights / weights.sum()
    torch.manual_seed(seed)
    cfg = MemoryLMConfig(vocab_size=vocab, mixer=mixer_config(name, d, head_dim), d_model=d, n_layers=2)
    model = MemoryLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    rng = np.random.default_rng(seed)
    t0 = time.time()
    losses: list[float] = []
    skipped = 0
    for step in range(steps):
        # a single setting draws no choice, so its random stream (and results) match runs made before pools
        seq_len, n_pairs = pool[rng.choice(len(pool), p=weights)] if len(pool) > 1 else pool[0]
        x, y = mqar_batch(rng, batch, seq_len, n_pairs, vocab)
        h, _ = model.hidden(x)  # (B, L, D)
        mask = y != -100
        loss = F.cross_entropy(model.head(h[mask]), y[mask])  # logits only where scored
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            skipped += 1  # a diverged step (inner memory blew up): skip it rather than poison the weights
        else:
            opt.step()
            losses.append(loss.item())
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"{name} L={seq_len} D={n_pairs} d={d} lr={lr:g} step {step + 1} loss {loss.item():.3f}", flush=True)
    train_s = time.time() - t0
    records = []
    for seq_len, n_pairs in settings:
        test_x, test_y = mqar_batch(np.random.default_rng(10_000 + seq_len), n_test, seq_len, n_pairs, vocab)
        records.append(
            {
                "model": name,
                "vocab": vocab,
                "seq_len": seq_len,
                "n_pairs": n_pairs,
                "d_model": d,
                "lr": lr,
                "steps": steps,
                "batch": batch,
                "train_mix": train_mix,
                "train_examples": steps * batch,
                "test_examples": n_test,
                "accuracy": evaluate(model, test_x, test_y, batch=100),
                "final_train_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
                "skipped_nonfinite_steps": skipped,
                "train_seconds": round(train_s, 1),
                "params": sum(p.numel() for p in model.parameters()),
                "seed": seed,
                "mixer_config": {k: v for k, v in asdict(cfg.mixer).items()},
            }
        )
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="attention,mosaics,atlas,atlas_nopoly_c1,linear_attention")
    ap.add_argument("--settings", default="64:4,128:8,256:16", help="comma-separated L:D")
    ap.add_argument("--widths", default="64,128")
    ap.add_argument("--head-dim", type=int, default=16, help="heads = width // head dim")
    ap.add_argument("--lrs", default="1e-3,3e-3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/core/mqar.jsonl")
    ap.add_argument("--log-every", type=int, default=50, help="print the training loss every N steps (0: never)")
    ap.add_argument(
        "--train-mix",
        choices=["none", "zoology"],
        default="none",
        help="none: train on each tested setting; zoology: one model per run on zoology's pool, tested on all",
    )
    ap.add_argument("--quick", action="store_true", help="tiny run: (64,4), width 64, vocab 512, 20 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.settings, args.widths, args.lrs, args.steps, args.n_test = "64:4", "64", "1e-2", 20, 200
        args.vocab = 512
        args.out = args.out.replace(".jsonl", "_quick.jsonl")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add(
                (
                    r["model"],
                    r["seq_len"],
                    r["n_pairs"],
                    r["d_model"],
                    r["lr"],
                    r["steps"],
                    r["batch"],
                    r["vocab"],
                    r["d_model"] // r["mixer_config"]["n_heads"],
                    r.get("train_mix", "none"),
                    r["seed"],
                )
            )
    settings = [(int(st.split(":")[0]), int(st.split(":")[1])) for st in args.settings.split(",")]
    # one training run per group of settings: each setting alone, or all of them for one mixed-pool model
    groups = [[st] for st in settings] if args.train_mix == "none" else [settings]
    common = (args.steps, args.batch, args.vocab, args.head_dim, args.train_mix, args.seed)
    for group in groups:
        for d in (int(v) for v in args.widths.split(",")):
            for name in args.models.split(","):
                for lr in (float(v) for v in args.lrs.split(",")):
                    keys = [(name, L, D, d, lr, *common) for L, D in group]
                    if all(key in done for key in keys):
                        continue
                    records = run(
                        name,
                        group,
                        d,
                        lr,
                        args.steps,
                        args.batch,
                        args.seed,
                        args.n_test,
                        args.vocab,
                        args.log_every,
                        args.head_dim,
                        args.train_mix,
                    )
                    for r in records:
                        print(
                            f"{name:18s} V={args.vocab} L={r['seq_len']:4d} D={r['n_pairs']:3d} d={d:4d} "
                            f"lr={lr:.0e} mix={args.train_mix} acc={r['accuracy']:.3f} "
                            f"loss={r['final_train_loss']:.3f} {r['train_seconds']}s",
                            flush=True,
                        )
                    with out.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
