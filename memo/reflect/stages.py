"""MeMo stages 2-6 as pure async functions of an LLM and their inputs (no database): indirect facts, consolidation,
verification with rewrite, entity surfacing, cross-document synthesis. Each asks for JSON with a schema through
:func:`memo.llm.base.chat_json` (guided decoding on vLLM, tolerant parsing with bounded retries locally); output
that never parses is counted in :class:`StageStats`, never raised. The rules a pair must pass are in
:mod:`memo.questions`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memo.llm.base import LLM, JsonStats, Message, chat_json
from memo.llm.metered import Usage
from memo.questions import content_words, normalise_question, standalone_violations, ungrounded, usable_pair
from memo.reflect import prompts
from memo.reflect.pairs import QAPair, Source
from memo.reflect.syntax import KIND_ATOMIC, KIND_SEQUENCE

log = logging.getLogger(__name__)

KIND_CONSOLIDATED = {2: "consolidated_2", 3: "consolidated_3", 4: "consolidated_4plus"}


@dataclass
class StageStats(Usage):
    """Figures of one unit of work (summed per stage and per document): the calls and tokens of its
    :class:`memo.llm.metered.MeteredLLM`, and what became of its pairs."""

    unparseable: int = 0  # structured outputs that never parsed (after retries)
    json_retries: int = 0
    rejected: int = 0  # parsed but unusable pairs (no question, empty answer, answer leaks...)
    verified: int = 0
    rewritten: int = 0
    dropped_in_verification: int = 0
    facts_without_question: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in vars(self).items() if k != "extra"}
        return {**out, **self.extra}


async def _json(
    llm: LLM,
    messages: list[Message],
    schema: dict[str, Any],
    convert: Callable[[Any], Any],
    stats: StageStats,
    **kw: Any,
) -> Any:
    js = JsonStats()
    value = await chat_json(llm, messages, schema=schema, convert=convert, stats=js, **kw)
    stats.unparseable += js.failures
    stats.json_retries += js.retries
    return value


# -- parsing replies ----------------------------------------------------------------------------------------------
def _pairs_of(types: list[str] | None) -> Callable[[Any], list[tuple[str, str, str]]]:
    """Converter for a {"pairs": [...]} reply: (type, question, answer) triples; raises on a wrong shape."""

    def convert(value: Any) -> list[tuple[str, str, str]]:
        items = value["pairs"] if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise TypeError("pairs is not a list")
        out = []
        for it in items:
            if not isinstance(it, dict):
                continue
            q, a = str(it.get("question", "")).strip(), str(it.get("answer", "")).strip()
            t = str(it.get("type", "")).strip()
            if types is not None and t not in types:
                t = types[0] if len(types) == 1 else ""
            out.append((t, q, a))
        return out

    return convert


def _pair_of(value: Any) -> tuple[str, str]:
    q, a = str(value["question"]).strip(), str(value["answer"]).strip()
    if not q or not a:
        raise ValueError("empty question or answer")
    return q, a


# -- stage 2: indirect facts ------------------------------------------------------------------------------------------
async def indirect_facts(
    llm: LLM, chunk: str, source: Source, stats: StageStats, *, retries: int = 1, max_tokens: int = 384
) -> list[QAPair]:
    """Implied facts of one chunk, each kind recorded as ``indirect_<type>`` (calculated, possessive, pronoun,
    temporal, action_chain)."""
    got = await _json(
        llm,
        prompts.indirect_messages(chunk),
        prompts.INDIRECT_SCHEMA,
        _pairs_of(prompts.INDIRECT_TYPES),
        stats,
        retries=retries,
        max_tokens=max_tokens,
    )
    out = []
    for t, q, a in got or []:
        if t and usable_pair(q, a):
            out.append(QAPair(q, a, f"indirect_{t}", (source,)))
        else:
            stats.rejected += 1
    return out


# -- stage 3: consolidation ---------------------------------------------------------------------------------------
_ENTITY = re.compile(r"\b[A-Z][\w'&-]*(?:\s+(?:of|de|the|and|&)?\s*[A-Z][\w'&-]*)*|\b\d[\d,.:]*\b")
_NOT_ENTITIES = {
    "The", "A", "An", "What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "Is", "Are", "Does",
    "Do", "Did", "Was", "Were", "Can", "In", "On", "At", "For", "If", "It", "I", "Under", "After", "Before",
}  # fmt: skip


_CONNECTORS = {"of", "de", "the", "and", "&"} | {w.lower() for w in _NOT_ENTITIES}


def entities(text: str) -> set[str]:
    """Capitalised names and numbers of ``text`` (a cheap entity extractor for grouping and relatedness)."""
    out = set()
    for m in _ENTITY.finditer(text):
        words = [w.strip(" .,:") for w in m.group(0).split() if w not in _NOT_ENTITIES]
        name = " ".join(w for w in words if w)
        if name and not (name.isdigit() and len(name) == 1):
            out.add(name.lower())
        if len(words) > 1:  # "The Zorblax IT helpdesk" also mentions Zorblax
            out.update(w.lower() for w in words if len(w) > 1 and w[0].isupper() and w.lower() not in _CONNECTORS)
    return out


def consolidation_groups(pairs: list[QAPair], max_groups: int) -> list[list[QAPair]]:
    """Groups of 2, 3 and 4 pairs with distinct answers that share an entity (name or number), most shared
    entities first; deterministic for the same input (so a resumed job makes the same groups)."""
    distinct: dict[str, QAPair] = {}
    for p in pairs:
        distinct.setdefault(normalise_question(p.answer), p)
    items = list(distinct.values())
    ents = [entities(p.question + " " + p.answer) for p in items]
    by_entity: dict[str, list[int]] = {}
    for i, es in enumerate(ents):
        for e in es:
            by_entity.setdefault(e, []).append(i)
    groups: list[list[QAPair]] = []
    seen: set[tuple[int, ...]] = set()
    for _, members in sorted(by_entity.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        start, sizes = 0, [2, 3, 4]
        k = 0
        while len(groups) < max_groups and len(members) >= 2:
            size = sizes[k % 3]
            window = members[start : start + size]
            if len(window) < 2:
                break
            key = tuple(sorted(window))
            if key not in seen:
                seen.add(key)
                groups.append([items[i] for i in window])
            start += size
            k += 1
        if len(groups) >= max_groups:
            break
    return groups


async def consolidate(
    llm: LLM, group: list[QAPair], stats: StageStats, *, retries: int = 1, max_tokens: int = 384, max_words: int = 150
) -> QAPair | None:
    """One pair combining the facts of ``group`` (originals are kept by the caller); kind by group size."""
    got = await _json(
        llm,
        prompts.consolidate_messages([(p.question, p.answer) for p in group]),
        prompts.CONSOLIDATE_SCHEMA,
        _pair_of,
        stats,
        retries=retries,
        max_tokens=max_tokens,
    )
    if got is None:
        return None
    q, a = got
    if not usable_pair(q, a) or len(a.split()) > max_words:
        stats.rejected += 1
        return None
    sources = tuple(dict.fromkeys(s for p in group for s in p.sources))
    return QAPair(q, a, KIND_CONSOLIDATED[min(len(group), 4)], sources)


# -- stage 4: verification ----------------------------------------------------------------------------------------
def _verdict(value: Any) -> tuple[bool, list[str]]:
    ok = value["self_contained"]
    if isinstance(ok, str):
        ok = ok.strip().lower() in ("true", "yes")
    if not isinstance(ok, bool):
        raise TypeError("self_contained is not a boolean")
    violations = value.get("violations") or []
    return ok, [str(v) for v in violations] if isinstance(violations, list) else []


async def check(
    llm: LLM, pair: QAPair, source: str, stats: StageStats, *, judge: bool = True, retries: int = 1
) -> tuple[bool, list[str]]:
    """The binary self-containment check: deterministic rules (and grounding in ``source``) first, then, with
    ``judge``, the LLM at temperature 0. An LLM verdict that never parses is counted and the rules decide."""
    short = pair.kind in (KIND_ATOMIC, KIND_SEQUENCE)
    rules = standalone_violations(pair.question, pair.answer, short_answer=short) + ungrounded(
        pair.answer, source, pair.kind
    )
    if rules or not judge:
        return not rules, rules
    got = await _json(
        llm,
        prompts.verify_messages(pair.question, pair.answer),
        prompts.VERIFY_SCHEMA,
        _verdict,
        stats,
        retries=retries,
        max_tokens=48,
    )
    if got is None:
        return True, []
    ok, violations = got
    return ok, violations or ([] if ok else ["judged not self-contained"])


async def verify(
    llm: LLM,
    pair: QAPair,
    source_text: str,
    stats: StageStats,
    *,
    attempts: int = 5,
    judge: bool = True,
    judge_rewrites: bool = True,
    retries: int = 1,
    max_tokens: int = 160,
) -> QAPair | None:
    """The pair if it passes :func:`check`; else rewritten from ``source_text``: one greedy rewrite, then the
    remaining ``attempts - 1`` sampled rewrites concurrently (one round for a batching server), the first that
    passes (in order) wins. None (dropped, counted) when no rewrite passes. ``judge``: ask the LLM about the
    original pair; ``judge_rewrites``: about the rewrites (the rules always apply)."""
    ok, violations = await check(llm, pair, source_text, stats, judge=judge, retries=retries)
    if ok:
        stats.verified += 1
        return pair

    async def rewrite(temperature: float) -> QAPair | None:
        got = await _json(
            llm,
            prompts.rewrite_messages(pair.question, pair.answer, source_text, violations),
            prompts.PAIR_SCHEMA,
            _pair_of,
            stats,
            retries=0,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        if got is None:
            return None
        new = QAPair(got[0], got[1], pair.kind, pair.sources)
        passed, _ = await check(llm, new, source_text, stats, judge=judge_rewrites, retries=retries)
        return new if passed else None

    rounds = [[0.0], [0.8] * (attempts - 1)]
    for temps in rounds:
        for new in await asyncio.gather(*(rewrite(t) for t in temps)):
            if new is not None:
                stats.verified += 1
                stats.rewritten += 1
                return new
    stats.dropped_in_verification += 1
    log.info("dropped after %d rewrites: %r", attempts, pair.question[:80])
    return None


# -- stage 5: entity surfacing ------------------------------------------------------------------------------------
async def entity_pairs(
    llm: LLM, chunk: str, source: Source, stats: StageStats, *, retries: int = 1, max_tokens: int = 384
) -> list[QAPair]:
    """Reverse-lookup questions (describe an entity without naming it; the answer names it) and relation-traversal
    questions, kinds ``entity_reverse_lookup`` / ``entity_relation_traversal``."""
    got = await _json(
        llm,
        prompts.entity_messages(chunk),
        prompts.ENTITY_SCHEMA,
        _pairs_of(prompts.ENTITY_TYPES),
        stats,
        retries=retries,
        max_tokens=max_tokens,
    )
    out = []
    for t, q, a in got or []:
        if not t or not usable_pair(q, a):
            stats.rejected += 1
            continue
        if t == "reverse_lookup":
            named = entities(a) - entities(q)
            if not named:  # the answer must name what the question only describes
                stats.rejected += 1
                continue
        out.append(QAPair(q, a, f"entity_{t}", (source,)))
    return out


# -- stage 6: cross-document synthesis ----------------------------------------------------------------------------
def _cross_of(n: int) -> Callable[[Any], list[tuple[str, str, str, list[int]]]]:
    def convert(value: Any) -> list[tuple[str, str, str, list[int]]]:
        items = value["pairs"] if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise TypeError("pairs is not a list")
        out = []
        for it in items:
            if not isinstance(it, dict):
                continue
            raw = it.get("uses") or []
            uses = [int(u) for u in raw if isinstance(u, int | float) and 1 <= u <= n] if isinstance(raw, list) else []
            out.append(
                (str(it.get("type", "")), str(it.get("question", "")).strip(), str(it.get("answer", "")).strip(), uses)
            )
        return out

    return convert


async def cross_pairs(
    llm: LLM, anchor: QAPair, others: list[QAPair], stats: StageStats, *, retries: int = 1, max_tokens: int = 384
) -> list[QAPair]:
    """Converging clues and parallel properties between ``anchor`` and pairs of other documents; the sources are
    the anchor's plus those of the facts the reply says it used (all of the batch when it does not say)."""
    got = await _json(
        llm,
        prompts.cross_messages((anchor.question, anchor.answer), [(p.question, p.answer) for p in others]),
        prompts.CROSS_SCHEMA,
        _cross_of(len(others)),
        stats,
        retries=retries,
        max_tokens=max_tokens,
    )
    out = []
    for t, q, a, uses in got or []:
        if t not in prompts.CROSS_TYPES or not usable_pair(q, a):
            stats.rejected += 1
            continue
        used = [others[u - 1] for u in uses] or others
        sources = tuple(dict.fromkeys([*anchor.sources, *(s for p in used for s in p.sources)]))
        out.append(QAPair(q, a, f"cross_{t}", sources))
    return out


def content_overlap(a: str, b: str) -> int:
    return len(content_words(a) & content_words(b))
