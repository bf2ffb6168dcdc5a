"""How a collection's next memory version is built from the active one (the update policy).

``retrain``: one adapter on every live document's reflections. ``merge`` (``MEMO_TRAIN__UPDATE=merge``): a delta
adapter on the new documents' reflections and a rehearsal of earlier ones, trained on top of the served memory and
merged with the task vectors the active version's ledger keeps. A removed document's delta leaves the ledger (its
other documents are trained again into the new delta); a removed document of the first adapter, a consolidation, or
a ledger of ``consolidate_after`` deltas retrains on the union.

:func:`select_training` decides what a version trains on, :func:`train_update` trains and merges it; the pipeline's
train stage keeps the bookkeeping (version row, checkpoints, progress, metrics).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from memo.db import Document, DocumentStatus, MemoryVersion, Reflection, ReflectionSource
from memo.errors import InvalidInput
from memo.merge.adapters import merge_adapters
from memo.settings import Recipe, Settings, TrainSettings
from memo.train.gate import Pair, split_holdout
from memo.train.sft import Progress, TrainResult, train_sft

Row = tuple[str, str, str, str]  # (reflection id, question, answer, document id)


@dataclass
class LedgerEntry:
    """One task vector of a version's ledger: the adapter at ``path``, trained on ``examples`` pairs, carrying the
    knowledge of ``documents`` (every document its pairs came from). Stored as a dict in ``MemoryVersion.ledger``."""

    path: str
    documents: list[str]
    examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "documents": list(self.documents), "examples": self.examples}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> LedgerEntry:
        return cls(str(entry["path"]), list(entry["documents"]), int(entry.get("examples", 0)))


@dataclass
class UpdatePlan:
    """How the next version is built. ``merge`` keeps the ledger entries ``keep`` and trains a delta on the documents
    ``train_docs`` (none: it only drops deltas); ``retrain`` trains one adapter on every live document."""

    mode: Literal["retrain", "merge"]
    keep: list[LedgerEntry]
    train_docs: set[str]
    reason: str = ""  # why a retrain
    dropped: int = 0  # entries of the active version's ledger left out
    # the adapter the active version serves when every entry is kept: the merge of ``keep`` already
    served: str | None = None


def plan_update(
    settings: Settings,
    previous: MemoryVersion | None,
    live: set[str],
    new_docs: set[str],
    *,
    consolidate: bool = False,
) -> UpdatePlan:
    """The plan of the version after ``previous`` (the active one), for the ``live`` documents of which ``new_docs``
    are not learned yet; ``consolidate``: retrain on the union whatever the settings."""
    cfg = settings.train

    def retrain(reason: str) -> UpdatePlan:
        return UpdatePlan("retrain", [], set(live), reason)

    if consolidate:
        return retrain("consolidation requested")
    if cfg.update != "merge" or cfg.method != "lora":
        return retrain(f"update={cfg.update}, method={cfg.method}")
    # an earlier version's method is "lora" or a whole model's ("full_finetune"; "full" before migration 0005)
    if previous is None or not previous.ledger or previous.metrics.get("method", "lora") != "lora":
        return retrain("no earlier LoRA version to update")
    if previous.base_model != settings.memory_base_model:
        return retrain("the base model changed: task vectors only add up on their own base")
    ledger = [LedgerEntry.from_dict(e) for e in previous.ledger]
    first, deltas = ledger[0], ledger[1:]
    if not set(first.documents) <= live:
        return retrain("a document of the base adapter was removed")
    keep = [first] + [d for d in deltas if set(d.documents) <= live]
    redo = {doc for d in deltas if not set(d.documents) <= live for doc in d.documents} & live
    train_docs = new_docs | redo
    if cfg.consolidate_after and len(keep) - 1 + bool(train_docs) >= cfg.consolidate_after:
        return retrain(f"the ledger reached consolidate_after={cfg.consolidate_after} deltas")
    served = previous.adapter_path if len(keep) == len(ledger) else None
    return UpdatePlan("merge", keep, train_docs, dropped=len(ledger) - len(keep), served=served)


def rehearsal(
    rows: Sequence[Row],
    plan: UpdatePlan,
    k: int,
    seed: int,
    losses: Mapping[str, float] | None = None,
    hard: float = 0.0,
) -> tuple[list[Pair], set[str]]:
    """``k`` reflections (id, question, answer) of the documents a merge keeps, to rehearse in the new delta against
    forgetting, and the documents they come from (the delta then carries some of their knowledge: its ledger entry
    must name them, so deleting one of them drops the delta too). A ``hard`` share of them are those with the highest
    recorded ``losses`` (by reflection id: what the served memory knows least), the rest are drawn at random
    (seeded)."""
    kept = {doc for e in plan.keep for doc in e.documents} - plan.train_docs
    pool = sorted(r for r in rows if r[3] in kept)
    k = min(max(k, 0), len(pool))
    loss = {i: x for i, x in (losses or {}).items() if math.isfinite(x)}
    picked = sorted((r for r in pool if r[0] in loss), key=lambda r: -loss[r[0]])[: round(hard * k)]
    chosen = {r[0] for r in picked}
    picked += random.Random(seed).sample([r for r in pool if r[0] not in chosen], k - len(picked))
    return [(i, q, a) for i, q, a, _ in picked], {d for *_, d in picked}


def delta_recipe(cfg: TrainSettings) -> Recipe:
    """The recipe a merge update's delta trains by: the whole training's, with the delta's epochs, batch size,
    learning rate, top layers and dropout (``cfg.delta``; a 0 epochs, batch size or rate is the whole training's)."""
    d = cfg.delta
    delta = {
        "epochs": d.epochs or cfg.epochs,
        "top_layers": d.top_layers,
        "dropout": d.dropout,
        "batch_size": d.batch_size or cfg.batch_size,
        "lr": d.lr or cfg.lr,
    }
    return Recipe.model_validate({**cfg.model_dump(include=set(Recipe.model_fields)), **delta})


def merge_deltas(
    base: str, cfg: TrainSettings, adapters: list[str], target: Path, weights: list[float] | None = None
) -> Path:
    """The served adapter of a ledger: its task vectors merged by ``cfg.merge.combination``, at the sum of their
    ranks up to ``cfg.merge.rank``."""
    rank = min(cfg.rank * len(adapters), cfg.merge.rank) if cfg.merge.rank else cfg.rank
    return merge_adapters(
        base,
        adapters,
        target,
        weights=weights,
        combination=cfg.merge.combination,
        density=cfg.merge.density,
        rank=rank,
        seed=cfg.seed,
    )


def live_documents(session: Session, collection_id: str) -> list[str]:
    """Ids of the collection's documents the memory should know: reflected and not deleted, oldest first."""
    return list(
        session.scalars(
            select(Document.id)
            .where(
                Document.collection_id == collection_id,
                Document.status.in_([DocumentStatus.reflected, DocumentStatus.trained]),
            )
            .order_by(Document.created_at, Document.id)
        )
    )


@dataclass
class TrainingData:
    """What the next version trains on (:func:`select_training`)."""

    plan: UpdatePlan
    documents: list[str]  # the live documents: what the version will know, oldest first
    new: list[Pair]  # the reflections of ``plan.train_docs``, less the held-out ones
    heldout: list[Pair]  # the new documents' reflections held out of training: early stopping and the gate
    rehearsed: list[Pair] = field(default_factory=list)  # merge: earlier reflections rehearsed against forgetting
    delta_documents: list[str] = field(default_factory=list)  # merge: every document the delta carries
    known: dict[str, float] = field(default_factory=dict)  # merge: the served memory's loss on each reflection
    reflections: set[str] = field(default_factory=set)  # ids of every live reflection

    @property
    def trained(self) -> list[Pair]:
        """Every pair the training sees, in its order: the new ones, then the rehearsed."""
        return self.new + self.rehearsed

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(q, a) for _, q, a in self.trained]

    @property
    def heldout_pairs(self) -> list[tuple[str, str]]:
        return [(q, a) for _, q, a in self.heldout]


def select_training(
    session: Session,
    settings: Settings,
    collection_id: str,
    previous: MemoryVersion | None,
    *,
    consolidate: bool = False,
    new_docs: Iterable[str] | None = None,
) -> TrainingData:
    """Plan the version after ``previous`` (the active one) and select its pairs: the held-out split of the new
    documents' reflections (``new_docs``; None = the reflected documents not trained yet), the pairs of the
    documents it trains on, and for a delta its rehearsal draw and the documents it carries."""
    cfg = settings.train
    documents = live_documents(session, collection_id)
    if not documents:
        raise InvalidInput("the collection has no documents left to learn from")
    live = set(documents)
    rows = session.execute(
        select(Reflection.id, Reflection.question, Reflection.answer, Reflection.document_id, Document.status)
        .join(Document, Document.id == Reflection.document_id)
        .where(Reflection.collection_id == collection_id, Reflection.document_id.in_(live))
        .order_by(Reflection.created_at, Reflection.id)
    ).all()
    if new_docs is None:
        new_docs = {d for _, _, _, d, status in rows if status == DocumentStatus.reflected}
    new_docs = set(new_docs)
    plan = plan_update(settings, previous, live, new_docs, consolidate=consolidate)
    _, heldout = split_holdout([(i, q, a) for i, q, a, d, _ in rows if d in new_docs], settings.gate)
    held = {i for i, _, _ in heldout}
    data = TrainingData(
        plan,
        documents,
        new=[(i, q, a) for i, q, a, d, _ in rows if d in plan.train_docs and i not in held],
        heldout=heldout,
        reflections={r[0] for r in rows},
    )
    if plan.mode == "retrain":
        if not data.new:
            raise InvalidInput("no reflections to train on")
        return data
    assert previous is not None  # a merge builds on the active version
    # what the served memory knows of each reflection (its training's loss), carried from version to version
    data.known = dict(previous.metrics.get("pair_losses", {}))
    replayed: set[str] = set()
    if data.new:
        earlier_held = set(previous.metrics.get("heldout_ids", []))
        pool = [(i, q, a, d) for i, q, a, d, _ in rows if i not in earlier_held]
        k = round(cfg.delta.replay * len(data.new))
        data.rehearsed, replayed = rehearsal(pool, plan, k, cfg.seed, data.known, cfg.delta.replay_hard)
    # a delta carries the knowledge of every document its pairs came from (cross-document pairs have several,
    # rehearsed pairs are earlier documents'): its ledger entry lists them all, so removing any of them drops it
    sources = session.scalars(
        select(ReflectionSource.document_id)
        .join(Reflection, Reflection.id == ReflectionSource.reflection_id)
        .where(Reflection.collection_id == collection_id, Reflection.document_id.in_(plan.train_docs))
        .distinct()
    )
    data.delta_documents = sorted((set(sources) | plan.train_docs | replayed) & live)
    return data


@dataclass
class UpdateResult:
    served: Path  # what the version serves: an adapter (or, full fine-tuned, a model directory)
    delta: Path | None  # merge: the delta trained for this version (None: it only dropped deltas)
    ledger: list[LedgerEntry]
    metrics: dict[str, Any]


def train_delta(
    settings: Settings,
    data: TrainingData,
    out: Path,
    *,
    start: str | None,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """A merge update's delta: ``data``'s pairs by the delta recipe, on top of the adapter ``start`` (the served
    memory; None = the bare base model), early stopping on ``data``'s held-out pairs."""
    return train_sft(
        settings.memory_base_model,
        data.pairs,
        out,
        delta_recipe(settings.train),
        eval_pairs=data.heldout_pairs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        start_adapter=start,
    )


def train_update(
    settings: Settings,
    data: TrainingData,
    out: Path,
    *,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
) -> UpdateResult:
    """Train the version ``data`` selects into ``out``: a retrain's adapter, or a delta merged with the kept ledger
    entries (an update that only drops deltas merges the kept ones). Its metrics include the held-out ids (the gate
    asks them), the loss on every live reflection as its training last recorded it, and the ids of the trained
    pairs the result does not know (:func:`memo.train.sft.known_pairs`; the share known after each pass is in
    ``known_shares``)."""
    base, cfg, plan = settings.memory_base_model, settings.train, data.plan
    ids = [i for i, _, _ in data.trained]
    metrics: dict[str, Any] = {"plan": plan.reason or "merge"}
    delta: Path | None = None
    if plan.mode == "retrain":
        result = train_sft(
            base, data.pairs, out, cfg, eval_pairs=data.heldout_pairs, progress=progress, checkpoint_dir=checkpoint_dir
        )
        served = result.adapter_path
        ledger = [LedgerEntry(str(served), data.documents, len(ids))]
        metrics.update(result.metrics)
        known = dict(zip(ids, result.pair_losses, strict=True))
    else:
        ledger, known = list(plan.keep), dict(data.known)

        def merge(entries: list[LedgerEntry], target: Path) -> Path:
            return merge_deltas(base, cfg, [e.path for e in entries], target)

        if ids:
            start = plan.served or str(merge(ledger, out / "start"))
            result = train_delta(
                settings, data, out / "delta", start=start, progress=progress, checkpoint_dir=checkpoint_dir
            )
            delta = result.adapter_path
            ledger.append(LedgerEntry(str(delta), data.delta_documents, len(ids)))
            metrics.update(result.metrics)
            known.update(zip(ids, result.pair_losses, strict=True))
        started = time.perf_counter()
        served = merge(ledger, out / "merged")
        metrics.update(
            merged_deltas=len(ledger),
            dropped_deltas=plan.dropped,
            merge_seconds=round(time.perf_counter() - started, 2),
        )
    metrics["heldout_ids"] = sorted(i for i, _, _ in data.heldout)
    if ids:  # what the trained weights still do not know (new and rehearsed pairs alike): the known test's misses
        metrics["unknown_ids"] = sorted(i for i, k in zip(ids, result.pair_known, strict=True) if not k)
    metrics["pair_losses"] = {i: round(x, 4) for i, x in known.items() if i in data.reflections and math.isfinite(x)}
    return UpdateResult(served, delta, ledger, metrics)
