"""The evaluation gate: closed-book recall on held-out questions of the new documents, and no forgetting of the
earlier documents (the old and the new version answer the same probe questions)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from memo.llm.base import LLM
from memo.memory import memory_messages
from memo.scoring import normalise, recalled
from memo.settings import GateSettings

Pair = tuple[str, str, str]  # (reflection id, question, answer)


def split_holdout(pairs: Sequence[Pair], cfg: GateSettings) -> tuple[list[Pair], list[Pair]]:
    """(train, held out). Only a fact with several questions gives one up, so every fact is still trained."""
    by_answer: dict[str, list[Pair]] = {}
    for p in pairs:
        by_answer.setdefault(p[2], []).append(p)
    budget = min(cfg.holdout_max, int(len(pairs) * cfg.holdout_fraction)) if cfg.enabled else 0
    held: set[str] = set()
    for group in sorted(by_answer.values(), key=lambda g: min(p[0] for p in g)):
        if len(held) >= budget:
            break
        if len(group) >= 2:
            held.add(max(group, key=lambda p: p[0])[0])
    return [p for p in pairs if p[0] not in held], [p for p in pairs if p[0] in held]


def knows(prediction: str, question: str, reference: str, share: float = 0.5) -> bool:
    """The prediction carries the reference's knowledge, not an echo of the question.

    A reflection's answer restates its question's words ("When was Zorblax founded?" -> "Zorblax was founded in
    2004 by Tobias Quillfeather."), so plain token overlap rewards a model that repeats the question. Only the
    reference's tokens that the question does not contain count: at least ``share`` of them must appear in the
    prediction. A reference with no such tokens falls back to :func:`memo.scoring.recalled`.
    """
    asked = set(normalise(question).split())
    novel = Counter(t for t in normalise(reference).split() if t not in asked)
    if not novel:
        return recalled(prediction, reference)
    got = Counter(normalise(prediction).split())
    return sum((novel & got).values()) >= share * sum(novel.values())


async def recall(llm: LLM, pairs: Sequence[Pair]) -> float | None:
    """Share of questions whose closed-book answer :func:`knows` the reference (None when there are none)."""
    if not pairs:
        return None
    answers = await asyncio.gather(*(llm.chat(memory_messages(q), max_tokens=64) for _, q, _ in pairs))
    return sum(knows(a, q, ref) for a, (_, q, ref) in zip(answers, pairs, strict=True)) / len(pairs)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    figures: dict[str, float | int | None]


def judge(
    cfg: GateSettings, heldout_recall: float | None, probe_new: float | None, probe_old: float | None, n: int, m: int
) -> Verdict:
    reasons = []
    if heldout_recall is not None and heldout_recall < cfg.min_recall:
        reasons.append(f"recall on {n} held-out questions {heldout_recall:.2f} < min_recall {cfg.min_recall:.2f}")
    forgetting = None
    if probe_new is not None and probe_old is not None:
        forgetting = probe_old - probe_new
        if forgetting > cfg.max_forgetting:
            reasons.append(
                f"recall on {m} earlier questions fell from {probe_old:.2f} to {probe_new:.2f} "
                f"(> max_forgetting {cfg.max_forgetting:.2f})"
            )
    figures = {
        "heldout": n,
        "heldout_recall": heldout_recall,
        "probes": m,
        "probe_recall_new": probe_new,
        "probe_recall_old": probe_old,
        "forgetting": forgetting,
    }
    return Verdict(not reasons, reasons, figures)
