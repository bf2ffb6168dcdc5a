"""SFT of the Memory model: one chat turn per reflection, loss on answer tokens only.

``method="lora"`` trains a peft adapter (the default: hot-loadable into vLLM, mergeable as a task vector);
``method="full_finetune"`` trains every weight and saves a whole model directory. Length-bucketed batches, seeded,
crash checkpoints with exact resume, and early stopping on the loss of held-out reflections. The tokens every example
starts with (the chat template's system turn) run once per batch, their keys and values shared by its rows; the output
head runs on answer positions only; with ``top_layers`` only the top decoder layers train, over cached states of the
frozen ones below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memo.blobs import write_dir_atomic
from memo.errors import TrainingDiverged
from memo.memory import memory_messages
from memo.settings import Recipe

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
Pair = tuple[str, str]  # (question, answer)


@dataclass
class TrainResult:
    adapter_path: Path  # a peft adapter directory (lora) or a whole model directory (full_finetune)
    method: str
    steps: int
    examples: int
    final_loss: float
    tokens: int  # trained in this run
    seconds: float
    resumed_from: int = 0  # the checkpoint step this run continued from (0 = from scratch)
    eval_losses: list[float] = field(default_factory=list)  # held-out loss after each epoch
    best_epoch: int | None = None  # the epoch whose weights were kept (early stopping), None = the last
    # each pair's mean loss per answer token when it was last trained, in the epoch whose weights were kept (the
    # training's own forward pass, so free; NaN for a pair never trained): how well the result knows each pair
    pair_losses: list[float] = field(default_factory=list)
    # whether the saved weights know each pair (:func:`known_pairs`: greedy decoding gives its answer back exactly)
    pair_known: list[bool] = field(default_factory=list)
    known_shares: list[float] = field(default_factory=list)  # the share of the pairs known after each pass
    heldout_known: list[float] = field(default_factory=list)  # the same of the held-out pairs (paraphrases)
    passes: int = 0  # complete passes: full epochs, then review rounds
    known_seconds: float = 0.0  # of ``seconds``: the known tests

    @property
    def known(self) -> float:
        """The share of the trained pairs the saved weights know."""
        return sum(self.pair_known) / len(self.pair_known) if self.pair_known else 0.0

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "examples": self.examples,
            "final_loss": round(self.final_loss, 4),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
            "resumed_from": self.resumed_from,
            "eval_losses": [round(x, 4) for x in self.eval_losses],
            "best_epoch": self.best_epoch,
            "passes": self.passes,
            "known": round(self.known, 4),
            "unknown": len(self.pair_known) - sum(self.pair_known),
            "known_shares": [round(x, 4) for x in self.known_shares],
            "heldout_known": [round(x, 4) for x in self.heldout_known],
            "known_seconds": round(self.known_seconds, 2),
        }


def encode_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn and its labels (-100 on everything but the answer and its end token)."""
    prompt = tokenizer.apply_chat_template(memory_messages(question), tokenize=False, add_generation_prompt=True)
    p_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids: list[int] = tokenizer(answer.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def length_buckets(n: int, batch_size: int, rng: random.Random, lengths: Sequence[int]) -> list[list[int]]:
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


def collate(encoded: Sequence[tuple[list[int], list[int]]], idx: Sequence[int], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded (ids, labels, attention mask) of the examples ``idx``."""
    import torch

    width = max(len(encoded[j][0]) for j in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
    for row, j in enumerate(idx):
        seq, lab = encoded[j]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def shared_prefix(encoded: Sequence[tuple[list[int], list[int]]]) -> int:
    """How many tokens every example starts with (the system turn and the user header of the chat template), short of
    the last prompt token: no position whose output the loss reads."""
    first = min(next(i for i, t in enumerate(labels) if t != -100) for _, labels in encoded)
    head = encoded[0][0]
    p = 0
    while p < first - 1 and all(ids[p] == head[p] for ids, _ in encoded):
        p += 1
    return p


def run_decoder(decoder: Any, x: Any, mask: Any, prefix: Any = None) -> Any:
    """The decoder's last hidden states on a right-padded batch ``x`` (ids (B, T) or states (B, T, H)) whose rows all
    continue ``prefix`` (ids (1, P) or states (1, P, H); None = no prefix): the prefix runs once and its keys and
    values serve every row, which gives the rows' states as if each ran whole (causal attention: the prefix never
    sees what follows it), gradients included."""
    import torch
    from transformers import DynamicCache

    key = "input_ids" if x.dtype == torch.long else "inputs_embeds"
    if prefix is None:
        return decoder(**{key: x}, attention_mask=mask).last_hidden_state
    cache = DynamicCache(config=decoder.config)
    decoder(**{key: prefix}, cache=cache, use_cache=True)
    cache.batch_repeat_interleave(x.shape[0])
    mask = torch.cat([mask.new_ones((x.shape[0], prefix.shape[1])), mask], dim=1)  # (B, P + T)
    return decoder(**{key: x}, attention_mask=mask, cache=cache, use_cache=True).last_hidden_state


def fingerprint(
    base_model: str, pairs: Sequence[Pair], eval_pairs: Sequence[Pair], cfg: Recipe, start: str | None = None
) -> dict[str, str]:
    """What a checkpoint is valid for, part by part: the same base, starting adapter, data and recipe (its recipe
    fields only, so settings that do not shape this training, e.g. the update policy of :class:`TrainSettings`, do
    not count)."""
    parts = {
        "base": [base_model, start],
        "pairs": list(pairs),
        "heldout": list(eval_pairs),
        "recipe": cfg.model_dump(include=set(Recipe.model_fields)),
    }
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16] for k, v in parts.items()}


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, weights: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)


def cpu_has_native_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX): Linux's /proc/cpuinfo flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(cfg: Recipe) -> Any:
    """The dtype the forward and backward pass run in (None = float32), by ``cfg.precision``."""
    import torch

    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def _autocast(device: Any, dtype: Any) -> Any:
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _store_frozen_linears(model: Any, dtype: Any) -> None:
    """The frozen weights of linear layers kept in ``dtype``, the one autocast computes them in: the same values,
    without casting them again at every forward pass (LoRA factors stay). A weight tied to the input embedding (an
    output head) gets its own copy in ``dtype``, so the embedding lookup stays in float32 and the head, a large
    matrix, is not cast at every step."""
    import torch

    tied = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            for pname, p in list(module.named_parameters(recurse=False)):
                if p.requires_grad:
                    continue
                if id(p) in tied:
                    setattr(module, pname, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))
                else:
                    p.data = p.data.to(dtype)


def _decoder(model: Any) -> Any:
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()


@dataclass
class Cached:
    """The hidden states entering layer ``TopLayers.cut``: of the shared prefix (1, P, H; None without one) and of
    each example after it, (T_i - P, H)."""

    prefix: Any
    states: list[Any]


class TopLayers:
    """Training of the top decoder layers only, over states cached below them.

    The layers under ``cut`` are frozen (their LoRA factors stay zero), so the hidden states they hand to layer
    ``cut`` depend on the example alone: :meth:`cache` runs them once per example, and every later forward and
    backward pass runs layers ``cut..n`` on those states (``inputs_embeds`` of a model whose layer list is cut for
    the call, each layer's cache index renumbered to its place in the cut list). An epoch after the first then costs
    the top layers and the head, not the whole model.
    """

    def __init__(self, model: Any, top: int) -> None:
        self.decoder = _decoder(model)
        self.n = len(self.decoder.layers)
        if not 0 < top < self.n:
            raise ValueError(f"top_layers must be between 1 and {self.n - 1} for this model (it has {self.n} layers)")
        self.cut = self.n - top

    def freeze_below(self, model: Any) -> None:
        """Only the LoRA factors of layers ``cut..n`` train."""
        for name, p in model.named_parameters():
            hit = re.search(r"\.layers\.(\d+)\.", name)
            if p.requires_grad and (hit is None or int(hit.group(1)) < self.cut):
                p.requires_grad_(False)

    @contextlib.contextmanager
    def layers(self, start: int, stop: int, *, norm: bool = True) -> Any:
        """For the call: the decoder runs only layers ``start..stop`` (without its final norm unless ``norm``), as if
        they were its only layers (a key-value cache indexes them from 0)."""
        import torch

        layers, final = self.decoder.layers, self.decoder.norm
        self.decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
        indexed = [
            (m, m.layer_idx, i)
            for i, layer in enumerate(self.decoder.layers)
            for m in layer.modules()
            if isinstance(getattr(m, "layer_idx", None), int)
        ]
        for m, _, i in indexed:
            m.layer_idx = i
        if not norm:
            self.decoder.norm = torch.nn.Identity()
        try:
            yield
        finally:
            self.decoder.layers, self.decoder.norm = layers, final
            for m, old, _ in indexed:
                m.layer_idx = old

    def cache(
        self,
        model: Any,
        encoded: Sequence[tuple[list[int], list[int]]],
        batch_size: int,
        pad_id: int,
        dtype: Any,
        prefix: int,
    ) -> Cached:
        """The hidden states entering layer ``cut`` of the ``prefix`` tokens every example starts with and of each
        example's tokens after them."""
        import torch

        if not encoded:
            return Cached(None, [])
        device = model.device
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]))
        states: list[Any] = [None] * len(encoded)
        head = torch.tensor([encoded[0][0][:prefix]], device=device) if prefix else None  # (1, P)
        was_training = model.training
        model.eval()
        # the LoRA factors below ``cut`` are frozen at zero: the layers compute what the base's do, without them
        with torch.no_grad(), _autocast(device, dtype), model.disable_adapter(), self.layers(0, self.cut, norm=False):
            shared = self.decoder(input_ids=head).last_hidden_state.float() if prefix else None  # (1, P, H)
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                ids, _, mask = collate(encoded, idx, pad_id)
                h = run_decoder(self.decoder, ids[:, prefix:].to(device), mask[:, prefix:].to(device), head)
                for row, j in enumerate(idx):
                    states[j] = h[row, : len(encoded[j][0]) - prefix].float().clone()
        model.train(was_training)
        return Cached(shared, states)

    def hidden(self, model: Any, cached: Cached, idx: Sequence[int], mask: Any) -> Any:
        """The decoder's output (after its final norm) on the examples ``idx`` from their cached states, after the
        shared prefix, right-padded to ``mask`` (B, T - P)."""
        import torch

        h = torch.zeros((len(idx), mask.shape[1], cached.states[idx[0]].shape[-1]), device=model.device)  # (B, T, H)
        for row, j in enumerate(idx):
            h[row, : len(cached.states[j])] = cached.states[j]
        with self.layers(self.cut, self.n):
            return run_decoder(self.decoder, h, mask.to(model.device), cached.prefix)


def answer_logits(
    model: Any,
    ids: Any,
    labels: Any,
    mask: Any,
    prefix: int = 0,
    top: TopLayers | None = None,
    cached: Cached | None = None,
    idx: Sequence[int] = (),
) -> tuple[Any, Any]:
    """The logits that predict answer tokens, (N, V), and those tokens, (N,). The ``prefix`` tokens every row starts
    with run once for the batch; the output head runs on the answer positions only (a row is mostly prompt, whose
    logits the loss never reads). With ``top``, the decoder runs its top layers on the ``cached`` states of the
    examples ``idx``."""
    device = model.device
    if top is not None:
        assert cached is not None
        h = top.hidden(model, cached, idx, mask[:, prefix:])  # (B, T - P, H)
    else:
        head = ids[:1, :prefix].to(device) if prefix else None
        h = run_decoder(_decoder(model), ids[:, prefix:].to(device), mask[:, prefix:].to(device), head)
    target = labels[:, prefix + 1 :].to(device)  # (B, T - P - 1): position t predicts token t+1
    keep = target != -100
    return model.get_output_embeddings()(h[:, :-1][keep]), target[keep]


def _eval_loss(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    dtype: Any = None,
    prefix: int = 0,
    top: TopLayers | None = None,
    cached: Cached | None = None,
) -> float:
    """Mean loss per answer token on held-out examples (from their cached states with ``top``)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), _autocast(model.device, dtype):
        for i in range(0, len(encoded), batch_size):
            idx = range(i, min(i + batch_size, len(encoded)))
            ids, labels, mask = collate(encoded, idx, pad_id)
            logits, target = answer_logits(model, ids, labels, mask, prefix, top, cached, idx)
            total += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
            count += len(target)
    model.train()
    return total / max(count, 1)


def known_pairs(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    dtype: Any = None,
    prefix: int = 0,
    top: TopLayers | None = None,
    cached: Cached | None = None,
) -> list[bool]:
    """Which examples the model knows: under teacher forcing every answer token (the end token included) is the
    model's argmax, which is exactly when greedy decoding from the question gives the answer back, token for token
    (ties aside). One forward pass per example, no dropout, batched by length (from their cached states with
    ``top``)."""
    import torch

    flags = [False] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]))
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(model.device, dtype):
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            ids, labels, mask = collate(encoded, idx, pad_id)
            logits, target = answer_logits(model, ids, labels, mask, prefix, top, cached, idx)
            row = (labels[:, prefix + 1 :] != -100).nonzero()[:, 0].to(logits.device)  # each answer token's row
            misses = torch.bincount(row[logits.argmax(-1) != target], minlength=len(idx))
            for j, miss in zip(idx, misses.tolist(), strict=True):
                flags[j] = miss == 0
    model.train(was_training)
    return flags


def review_round(known: Sequence[bool], rehearse: float, rng: random.Random) -> list[int]:
    """The examples of a review round: every one not known, and ``rehearse`` known ones per unknown one (at most all
    of them), drawn at random so the known are rehearsed, not forgotten."""
    unknown = [i for i, k in enumerate(known) if not k]
    kept = [i for i, k in enumerate(known) if k]
    return sorted(unknown + rng.sample(kept, min(len(kept), math.ceil(rehearse * len(unknown)))))


def _check_forward(
    model: Any, top: TopLayers | None, example: tuple[list[int], list[int]], pad_id: int, prefix: int
) -> None:
    """The training's forward pass (the shared prefix run once, the head on answer positions, with ``top`` the top
    layers over cached states) gives the model's own logits, in float32: an architecture that post-processes its
    logits (soft-capping), transforms ``inputs_embeds`` itself (scaling) or cannot continue a cached prefix would
    not, and cannot train this way."""
    import torch

    ids, labels, mask = collate([example], [0], pad_id)
    cached = top.cache(model, [example], 1, pad_id, None, prefix) if top is not None else None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        whole = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        whole = whole[:, :-1][labels[:, 1:].to(model.device) != -100]  # (N, V)
        ours, _ = answer_logits(model, ids, labels, mask, prefix, top, cached, [0])
    model.train(was_training)
    err = float((whole - ours).abs().max()) / max(float(whole.abs().max()), 1e-6)
    if err > 1e-4:
        raise ValueError(f"this model architecture cannot train with this recipe: its logits differ by {err:.2e}")


def train_sft(
    base_model: str,
    pairs: Sequence[Pair],
    out_dir: Path,
    cfg: Recipe,
    *,
    eval_pairs: Sequence[Pair] = (),
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    start_adapter: str | None = None,
) -> TrainResult:
    """Train on (question, answer) pairs and save the result to ``out_dir``, atomically.

    With ``start_adapter`` (a LoRA adapter of ``base_model``), it is merged into the base weights first and a new
    adapter is trained on top: the saved adapter is a task vector relative to base + start (a delta that builds on
    the served memory instead of interfering with it).

    After every epoch the loss on ``eval_pairs`` (held-out reflections) is measured; with at least
    ``cfg.early_stop_min_heldout`` of them, after ``cfg.patience`` epochs without improvement training stops and the
    best epoch's weights are saved. With ``checkpoint_dir``, weights, optimiser, scheduler and random states are
    saved every ``cfg.checkpoint_every`` steps; a run that finds a checkpoint for the same base, data and recipe
    continues from it and ends with the same weights as an uninterrupted run. The checkpoint is removed on success.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not pairs:
        raise ValueError("no reflections to train on")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = torch.device(cfg.device)
    dtype = autocast_dtype(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if start_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start_adapter).merge_and_unload()
    model = model.to(device)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    top = TopLayers(model, cfg.top_layers) if cfg.top_layers else None
    if top is not None:
        if cfg.method != "lora":
            raise ValueError("top_layers needs method=lora")
        top.freeze_below(model)
    encoded = [encode_pair(tokenizer, q, a) for q, a in pairs]
    held = [encode_pair(tokenizer, q, a) for q, a in eval_pairs]
    target = cfg.target_known
    # with a known target, the held-out loss neither stops training nor picks the weights: the pairs must be learned
    patience = cfg.patience if len(held) >= cfg.early_stop_min_heldout and not target else 0
    max_passes = max(cfg.max_epochs, cfg.epochs) if target else cfg.epochs
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = max(steps_per_epoch * cfg.epochs, cfg.min_steps)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(total * cfg.warmup_ratio))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))  # warmup, then constant

    step, tokens, loss_ema, skip, resumed_from = 0, 0, float("nan"), 0, 0
    eval_losses: list[float] = []
    best: dict[str, Any] | None = None  # the best epoch's trainable weights
    seen = [math.nan] * len(encoded)  # each pair's loss when it was last trained
    best_seen: list[float] = []  # the same at the end of the best epoch
    known: list[bool] = []  # the last known test's verdict on each pair (empty: none yet)
    known_shares: list[float] = []  # after each complete pass (with a target)
    heldout_known: list[float] = []
    passes, known_at, known_seconds = 0, -1, 0.0  # known_at: the step the last known test ran at
    epoch_rng: Any = None
    key = fingerprint(base_model, pairs, eval_pairs, cfg, start_adapter)
    if checkpoint_dir is not None and (checkpoint_dir / "state.pt").is_file():
        state = torch.load(checkpoint_dir / "state.pt", weights_only=False)
        if state["fingerprint"] == key:
            _load_trainable(model, state["weights"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            step, tokens, loss_ema, skip = state["step"], state["tokens"], state["loss_ema"], state["batch_in_epoch"]
            epoch_rng, resumed_from = state["epoch_rng"], state["step"]
            eval_losses, best = state["eval_losses"], state["best"]
            seen, best_seen = state["seen"], state["best_seen"]
            known, known_shares, heldout_known = state["known"], state["known_shares"], state["heldout_known"]
            passes, known_at, known_seconds = state["passes"], state["known_at"], state["known_seconds"]
            log.info("resuming training from step %d (%s)", step, checkpoint_dir)
        else:
            made = state["fingerprint"] if isinstance(state["fingerprint"], dict) else {}
            differ = sorted(k for k in key if made.get(k) != key[k])
            log.info("ignoring checkpoint %s: made for another %s", checkpoint_dir, ", ".join(differ))

    def checkpoint(batch_in_epoch: int) -> None:
        assert checkpoint_dir is not None
        state = {
            "fingerprint": key,
            "step": step,
            "tokens": tokens,
            "loss_ema": loss_ema,
            "batch_in_epoch": batch_in_epoch,
            "epoch_rng": epoch_rng,
            "eval_losses": eval_losses,
            "best": best,
            "seen": seen,
            "best_seen": best_seen,
            "known": known,
            "known_shares": known_shares,
            "heldout_known": heldout_known,
            "passes": passes,
            "known_at": known_at,
            "known_seconds": known_seconds,
            "weights": _trainable(model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        write_dir_atomic(checkpoint_dir, lambda tmp: torch.save(state, tmp / "state.pt"))

    def stalled() -> bool:
        if not patience or len(eval_losses) <= patience:
            return False
        return min(eval_losses[-patience:]) >= min(eval_losses[:-patience])

    def finished() -> bool:
        if not target:
            return step >= total or stalled()
        if cfg.max_steps and step >= cfg.max_steps:
            return True
        if known_shares and known_shares[-1] >= target and step >= cfg.min_steps:
            return True  # it knows what it was taught
        return step >= total and passes >= max_passes  # the budget is spent

    model.train()
    start, start_tokens = time.perf_counter(), tokens
    prefix = shared_prefix([*encoded, *held])
    _check_forward(model, top, encoded[0], pad_id, prefix)
    if dtype is not None:
        _store_frozen_linears(model, dtype)
    cached = held_cached = None
    if top is not None:  # timed: the cache is part of the training's compute (no backward pass: wider batches)
        cached = top.cache(model, encoded, max(cfg.batch_size, 16), pad_id, dtype, prefix)
        held_cached = top.cache(model, held, max(cfg.batch_size, 16), pad_id, dtype, prefix)
    lengths = [len(ids) for ids, _ in encoded]
    wide = max(cfg.batch_size, 16)  # the known test has no backward pass: wider batches

    def test_known(with_held: bool) -> list[bool]:
        nonlocal known_seconds, known_at
        t = time.perf_counter()
        flags = known_pairs(model, encoded, wide, pad_id, dtype, prefix, top, cached)
        if held and with_held:
            got = known_pairs(model, held, wide, pad_id, dtype, prefix, top, held_cached)
            heldout_known.append(sum(got) / len(got))
        known_seconds += time.perf_counter() - t
        known_at = step
        return flags

    while not finished():
        if epoch_rng is not None:  # resuming: replay this pass's order
            rng.setstate(epoch_rng)
        epoch_rng = rng.getstate()
        if not target or passes * steps_per_epoch < total:  # a full epoch (with a target: ``total``'s epochs)
            subset = list(range(len(encoded)))
            limit = (cfg.max_steps or math.inf) if target else total
        else:  # a review round: what is not known yet, and a rehearsal of what is
            subset = review_round(known, cfg.review_rehearse, rng)
            limit = cfg.max_steps or math.inf
        batches = [
            [subset[j] for j in b]
            for b in length_buckets(len(subset), cfg.batch_size, rng, [lengths[i] for i in subset])
        ]
        shown = max(total, step + len(batches) - skip) if target else total  # the progress bar's total
        for b, batch_idx in enumerate(batches):
            if b < skip:
                continue
            if step >= limit:
                break
            ids, labels, mask = collate(encoded, batch_idx, pad_id)
            with _autocast(device, dtype):
                logits, target_ids = answer_logits(model, ids, labels, mask, prefix, top, cached, batch_idx)
                per_token = torch.nn.functional.cross_entropy(logits.float(), target_ids, reduction="none")
                loss_t = per_token.mean()
            loss_t.backward()
            row = (labels[:, prefix + 1 :] != -100).nonzero()[:, 0].to(device)  # each answer token's row
            sums = torch.zeros(len(batch_idx), device=device).index_add_(0, row, per_token.detach())
            for i, x in zip(batch_idx, (sums / torch.bincount(row, minlength=len(batch_idx))).tolist(), strict=True):
                seen[i] = x
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            loss = float(loss_t.detach())
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # before the step spreads it to the weights
                raise TrainingDiverged(
                    f"training diverged at step {step + 1}: loss {loss:.4g}, gradient norm {grad_norm:.4g}; "
                    "nothing was saved (lower the learning rate or use precision fp32)"
                )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += int(mask.sum())
            loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
            if checkpoint_dir is not None and step % cfg.checkpoint_every == 0 and step < limit:
                checkpoint(b + 1)
            if progress:
                progress(step, shown)
        else:  # a whole pass: measure the held-out loss, remember the best weights (only early stopping uses them)
            passes += 1
            if held:
                eval_losses.append(_eval_loss(model, held, cfg.batch_size, pad_id, dtype, prefix, top, held_cached))
                if patience and eval_losses[-1] <= min(eval_losses):
                    best, best_seen = _trainable(model), list(seen)
                log.info("pass %d: held-out loss %.4f", passes, eval_losses[-1])
            if target:  # what it knows now: the next round reviews the rest
                known = test_known(with_held=True)
                known_shares.append(sum(known) / len(known))
                log.info("pass %d (step %d): %.3f of %d pairs known", passes, step, known_shares[-1], len(known))
        skip, epoch_rng = 0, None
    best_epoch = None
    if patience and best is not None and eval_losses[-1] > min(eval_losses):
        _load_trainable(model, best)
        best_epoch = eval_losses.index(min(eval_losses)) + 1
        seen = best_seen
        log.info("early stopping: keeping epoch %d of %d", best_epoch, len(eval_losses))
        known_at = -1
    if known_at != step:  # check what the saved weights know
        known = test_known(with_held=False)
    seconds = time.perf_counter() - start

    def save(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        if cfg.method == "full_finetune":
            tokenizer.save_pretrained(str(tmp))

    write_dir_atomic(out_dir, save)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info(
        "trained %d steps (%d passes) on %d pairs in %.1fs, loss %.3f, %.3f known",
        step, passes, len(encoded), seconds, loss_ema, sum(known) / len(known),
    )  # fmt: skip
    return TrainResult(
        out_dir, cfg.method, step, len(encoded), loss_ema, tokens - start_tokens, seconds, resumed_from,
        eval_losses, best_epoch, seen, known, known_shares, heldout_known, passes, known_seconds,
    )  # fmt: skip
