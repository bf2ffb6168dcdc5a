"""LoRA SFT of the Memory model with peft: one chat turn per reflection, loss on answer tokens only."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memo.reflect.prompts import memory_messages
from memo.settings import TrainSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class TrainResult:
    adapter_path: Path
    steps: int
    examples: int
    final_loss: float
    tokens: int  # trained in this run
    seconds: float
    resumed_from: int = 0  # the checkpoint step this run continued from (0 = from scratch)

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "examples": self.examples,
            "final_loss": round(self.final_loss, 4),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
            "resumed_from": self.resumed_from,
        }


def encode_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn and its labels (-100 on everything but the answer and its end token)."""
    prompt = tokenizer.apply_chat_template(memory_messages(question), tokenize=False, add_generation_prompt=True)
    p_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids: list[int] = tokenizer(answer.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def _batches(n: int, batch_size: int, rng: random.Random, lengths: Sequence[int]) -> list[list[int]]:
    """Shuffled batches of similar length (bucketing: sort a shuffled order in windows of 8 batches)."""
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * 8
    bucketed: list[int] = []
    for i in range(0, n, window):
        bucketed += sorted(order[i : i + window], key=lambda j: lengths[j])
    batches = [bucketed[i : i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches


def fingerprint(base_model: str, pairs: Sequence[tuple[str, str]], cfg: TrainSettings) -> str:
    """What a checkpoint is valid for: the same base, data and recipe."""
    h = hashlib.sha256(json.dumps([base_model, list(pairs), cfg.model_dump()], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(ckpt_dir: Path, model: Any, state: dict[str, Any]) -> None:
    import torch

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp / "adapter"))
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    tmp.rename(ckpt_dir)  # atomic: a crash while saving keeps the previous checkpoint... or none, never half of one


def train_lora(
    base_model: str,
    pairs: Sequence[tuple[str, str]],
    out_dir: Path,
    cfg: TrainSettings,
    *,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 20,
) -> TrainResult:
    """Train a LoRA adapter on (question, answer) pairs and save it (peft format) to ``out_dir``, atomically.

    With ``checkpoint_dir``, the adapter, optimiser, scheduler and random states are saved every
    ``checkpoint_every`` steps; a run that finds a checkpoint for the same base, data and recipe continues from it
    and ends with the same weights as an uninterrupted run. The checkpoint is removed on success.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not pairs:
        raise ValueError("no reflections to train on")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = torch.device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = get_peft_model(
        base.to(device),
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    encoded = [encode_pair(tokenizer, q, a) for q, a in pairs]
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(total * cfg.warmup_ratio))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))  # warmup, then constant

    step, tokens, loss_ema, skip, resumed_from = 0, 0, float("nan"), 0, 0
    epoch_rng: Any = None
    key = fingerprint(base_model, pairs, cfg)
    if checkpoint_dir is not None and (checkpoint_dir / "state.pt").is_file():
        state = torch.load(checkpoint_dir / "state.pt", weights_only=False)
        if state["fingerprint"] == key:
            weights = load_file(str(checkpoint_dir / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            step, tokens, loss_ema, skip = state["step"], state["tokens"], state["loss_ema"], state["batch_in_epoch"]
            epoch_rng, resumed_from = state["epoch_rng"], state["step"]
            log.info("resuming training from step %d (%s)", step, checkpoint_dir)
        else:
            log.info("ignoring checkpoint %s: made for other data or settings", checkpoint_dir)

    model.train()
    start, start_tokens = time.perf_counter(), tokens
    lengths = [len(ids) for ids, _ in encoded]
    while step < total:
        if epoch_rng is not None:  # resuming: replay this epoch's order
            rng.setstate(epoch_rng)
        epoch_rng = rng.getstate()
        batches = _batches(len(encoded), cfg.batch_size, rng, lengths)
        for b, batch_idx in enumerate(batches):
            if b < skip:
                continue
            if step >= total:
                break
            width = max(lengths[j] for j in batch_idx)
            ids = torch.full((len(batch_idx), width), pad_id, dtype=torch.long)  # (B, T)
            labels = torch.full((len(batch_idx), width), -100, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch_idx), width), dtype=torch.long)  # (B, T)
            for row, j in enumerate(batch_idx):
                seq, lab = encoded[j]
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(lab)] = torch.tensor(lab)
                mask[row, : len(seq)] = 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += int(mask.sum())
            loss = float(out.loss.detach())
            loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
            if checkpoint_dir is not None and step % checkpoint_every == 0 and step < total:
                _save_checkpoint(
                    checkpoint_dir,
                    model,
                    {
                        "fingerprint": key,
                        "step": step,
                        "tokens": tokens,
                        "loss_ema": loss_ema,
                        "batch_in_epoch": b + 1,
                        "epoch_rng": epoch_rng,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                    },
                )
            if progress:
                progress(step, total)
        skip, epoch_rng = 0, None
    seconds = time.perf_counter() - start
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info("trained %d steps on %d pairs in %.1fs, loss %.3f", step, len(encoded), seconds, loss_ema)
    return TrainResult(out_dir, step, len(encoded), loss_ema, tokens - start_tokens, seconds, resumed_from)
