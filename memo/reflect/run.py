"""The reflect stage of one document: the selected MeMo stages in the method's order, each cut into units of work
(a chunk, a consolidation group, a cross-document batch).

A unit's pairs, their provenance rows and the unit's marker (:class:`ReflectUnit`, keyed by document content hash +
PROMPT_VERSION + stage + the unit's inputs) are committed in one transaction, so a killed job resumes at the first
unfinished unit and never stores a pair twice. Pairs are deduplicated against the whole collection (exact question
hash, then MinHash near-duplicates). Per-document figures (pairs per kind, dropped in verification, tokens in/out and
unparseable outputs per stage) are summed from the unit markers, so they survive a resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from memo.db import Chunk, Database, Document, DocumentStatus, Reflection, ReflectionSource, ReflectUnit
from memo.ingest.chunk import token_counter
from memo.llm.base import LLM
from memo.llm.metered import MeteredLLM
from memo.questions import content_words, question_hash
from memo.reflect import stages as st
from memo.reflect.dedup import Deduplicator
from memo.reflect.direct import direct_facts
from memo.reflect.pairs import QAPair, Source
from memo.reflect.prompts import PROMPT_VERSION
from memo.settings import Settings

log = logging.getLogger(__name__)

CHUNK_STAGES = ("direct", "indirect", "entities")
# the pairs later stages build on: consolidation merges the pairs of the stages before it (direct and indirect facts;
# not the entity pairs made after it, so a re-run makes the same groups); cross-document synthesis anchors on every
# per-chunk kind
CONSOLIDATE_INPUT = ("direct", "indirect_")
CROSS_INPUT = ("direct", "indirect_", "entity_")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def work_key(content_hash: str, stage: str, unit: str) -> str:
    return hashlib.sha256(f"{content_hash}|{PROMPT_VERSION}|{stage}|{unit}".encode()).hexdigest()


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Unit:
    stage: str
    key: str
    run: Callable[[LLM, st.StageStats], Awaitable[list[QAPair]]]
    source_text: str  # what verification rewrites from


@dataclass
class _ChunkRow:
    id: str
    seq: int
    text: str


def related_documents(
    target: str, others: dict[str, str], *, max_related: int, min_similarity: float
) -> list[tuple[str, float]]:
    """Documents of the collection related to ``target`` (texts by id): the larger of the Jaccard overlap of their
    named entities and the tf-idf cosine of their content words, best first, at least ``min_similarity``, and
    sharing at least one entity or content word."""
    docs = {"__target__": target, **others}
    words = {d: Counter(x for w in t.split() for x in content_words(w)) for d, t in docs.items()}
    df: Counter[str] = Counter()
    for c in words.values():
        df.update(set(c))
    n = len(docs)

    def vec(c: Counter[str]) -> dict[str, float]:
        v = {w: tf * math.log((1 + n) / (1 + df[w]) + 1) for w, tf in c.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    tv = vec(words["__target__"])
    tents = st.entities(target)
    scored = []
    for d, text in others.items():
        ov = vec(words[d])
        cosine = sum(x * ov.get(w, 0.0) for w, x in tv.items())
        ents = st.entities(text)
        jacc = len(tents & ents) / max(1, len(tents | ents))
        score = max(jacc, cosine)
        if score >= min_similarity and score > 0:
            scored.append((d, round(score, 4)))
    scored.sort(key=lambda x: (-x[1], x[0]))
    return scored[:max_related]


class DocumentReflector:
    """Runs the selected stages on one document of a collection (see the module docstring)."""

    def __init__(self, db: Database, settings: Settings, document_id: str, progress: Progress | None = None) -> None:
        self.db, self.settings, self.document_id = db, settings, document_id
        self.cfg = settings.reflect
        self.progress = progress or (lambda stage, done, total: None)
        self.count = token_counter(settings.tokenizer_path)
        with db.session() as s:
            doc = s.get(Document, document_id)
            assert doc is not None
            self.collection_id, self.content_hash = doc.collection_id, doc.content_hash
            self.chunks = [
                _ChunkRow(c.id, c.seq, c.text)
                for c in s.scalars(select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.seq))
            ]
            self.finished = set(s.scalars(select(ReflectUnit.work_key).where(ReflectUnit.document_id == document_id)))
            self.dedup = Deduplicator(self.cfg.near_duplicate_threshold)
            for q in s.scalars(select(Reflection.question).where(Reflection.collection_id == self.collection_id)):
                self.dedup.add(q)
        self.chunk_text = {c.id: c.text for c in self.chunks}
        self._write_lock = asyncio.Lock()

    # -- units ----------------------------------------------------------------------------------------------------
    def _chunk_units(self, stage: str) -> list[Unit]:
        cfg = self.cfg
        units = []
        for c in self.chunks:
            src = (self.document_id, c.id)

            def make(c: _ChunkRow = c, src: Source = src) -> Callable[[LLM, st.StageStats], Awaitable[list[QAPair]]]:
                async def run(llm: LLM, stats: st.StageStats) -> list[QAPair]:
                    if stage == "direct":
                        pairs, failed = await direct_facts(
                            llm, c.text, variants=cfg.direct_variants, parsed=cfg.parsed_facts
                        )
                        stats.facts_without_question += failed
                        return [replace(p, sources=(src,)) for p in pairs]
                    fn = st.indirect_facts if stage == "indirect" else st.entity_pairs
                    return await fn(llm, c.text, src, stats, retries=cfg.json_retries, max_tokens=cfg.max_tokens)

                return run

            key = work_key(self.content_hash, stage, f"{c.seq}:{_text_hash(c.text)}")
            units.append(Unit(stage, key, make(), c.text))
        return units

    def _stored_pairs(self, document_ids: list[str], kinds: tuple[str, ...]) -> list[QAPair]:
        """Stored pairs of these documents whose kind starts with one of ``kinds``, in a stable order (kind, then
        question hash: independent of timing), with every source."""
        with self.db.session() as s:
            rows = s.execute(
                select(Reflection.id, Reflection.question, Reflection.answer, Reflection.kind, Reflection.document_id)
                .where(Reflection.document_id.in_(document_ids), Reflection.collection_id == self.collection_id)
                .order_by(Reflection.kind, Reflection.question_hash)
            ).all()
            ids = [r[0] for r in rows]
            sources: dict[str, list[Source]] = {}
            for rid, doc, chunk in s.execute(
                select(ReflectionSource.reflection_id, ReflectionSource.document_id, ReflectionSource.chunk_id).where(
                    ReflectionSource.reflection_id.in_(ids)
                )
            ):
                sources.setdefault(rid, []).append((doc, chunk))
            primary = {
                rid: chunk
                for rid, chunk in s.execute(select(Reflection.id, Reflection.chunk_id).where(Reflection.id.in_(ids)))
            }
        out = []
        for rid, q, a, kind, doc in rows:
            if not kind.startswith(kinds):
                continue
            first = (doc, primary[rid])
            srcs = [first] + [x for x in sources.get(rid, []) if x != first]
            out.append(QAPair(q, a, kind, tuple(srcs)))
        return out

    def _source_text(self, sources: tuple[Source, ...]) -> str:
        texts = [self.chunk_text.get(c) or self._other_chunk(c) for _, c in sources]
        return "\n\n".join(dict.fromkeys(t for t in texts if t))

    def _other_chunk(self, chunk_id: str) -> str:
        with self.db.session() as s:
            c = s.get(Chunk, chunk_id)
            return c.text if c is not None else ""

    def _consolidate_units(self) -> list[Unit]:
        cfg = self.cfg
        groups = st.consolidation_groups(
            self._stored_pairs([self.document_id], CONSOLIDATE_INPUT), cfg.consolidate_max_groups
        )
        units = []
        for group in groups:

            async def run(llm: LLM, stats: st.StageStats, group: list[QAPair] = group) -> list[QAPair]:
                p = await st.consolidate(
                    llm,
                    group,
                    stats,
                    retries=cfg.json_retries,
                    max_tokens=cfg.max_tokens,
                    max_words=cfg.consolidate_max_answer_words,
                )
                return [p] if p else []

            unit = ",".join(sorted(question_hash(p.question) for p in group))
            sources = tuple(dict.fromkeys(s for p in group for s in p.sources))
            units.append(
                Unit("consolidate", work_key(self.content_hash, "consolidate", unit), run, self._source_text(sources))
            )
        return units

    def _cross_units(self) -> tuple[list[Unit], list[tuple[str, float]]]:
        cfg = self.cfg
        if cfg.cross_max_anchors == 0 or cfg.cross_max_related == 0:
            return [], []
        with self.db.session() as s:
            others = s.scalars(
                select(Document.id).where(
                    Document.collection_id == self.collection_id,
                    Document.id != self.document_id,
                    Document.status.in_([DocumentStatus.reflected, DocumentStatus.trained]),
                )
            ).all()
            texts: dict[str, list[str]] = {}
            for doc_id, text in s.execute(
                select(Chunk.document_id, Chunk.text).where(Chunk.document_id.in_(others)).order_by(Chunk.seq)
            ):
                texts.setdefault(doc_id, []).append(text)
        mine = " ".join(c.text for c in self.chunks)
        related = related_documents(
            mine,
            {d: " ".join(t) for d, t in texts.items()},
            max_related=cfg.cross_max_related,
            min_similarity=cfg.cross_min_similarity,
        )
        if not related:
            return [], []
        own = self._stored_pairs([self.document_id], CROSS_INPUT)
        pool = self._stored_pairs([d for d, _ in related], CROSS_INPUT)
        shared = st.entities(mine) & set().union(*(st.entities(" ".join(texts[d])) for d, _ in related))

        def relevance(p: QAPair) -> int:
            return len(st.entities(p.question + " " + p.answer) & shared)

        # anchors: distinct facts of this document that mention what the related documents also mention
        distinct = list({p.answer: p for p in own}.values())
        anchors = sorted(distinct, key=lambda p: -relevance(p))[: cfg.cross_max_anchors]
        pool = list({p.answer: p for p in pool}.values())
        units = []
        for anchor in anchors:
            anchor_text = anchor.question + " " + anchor.answer

            def closeness(p: QAPair, anchor_text: str = anchor_text) -> int:
                return st.content_overlap(p.question + " " + p.answer, anchor_text) + relevance(p)

            batch = sorted(pool, key=closeness, reverse=True)[: cfg.cross_batch]
            if not batch:
                continue

            async def run(
                llm: LLM, stats: st.StageStats, anchor: QAPair = anchor, batch: list[QAPair] = batch
            ) -> list[QAPair]:
                return await st.cross_pairs(
                    llm, anchor, batch, stats, retries=cfg.json_retries, max_tokens=cfg.max_tokens
                )

            unit = question_hash(anchor.question) + ":" + ",".join(sorted(question_hash(p.question) for p in batch))
            key = work_key(self.content_hash, "cross", unit)
            units.append(Unit("cross", key, run, ""))  # source text filled per pair (its own sources)
        return units, related

    # -- running ----------------------------------------------------------------------------------------------------
    async def _run_units(self, llm: LLM, stage: str, units: list[Unit], sem: asyncio.Semaphore) -> None:
        """Every unfinished unit of one stage, concurrently. ``sem`` bounds the units generating at once (their
        requests are bounded by the generator's own ``max_concurrency``); a unit's verification and its database
        write happen after it has given its slot back, the write in a worker thread, so neither stalls the event
        loop or the other units' requests."""
        todo = [u for u in units if u.key not in self.finished]
        done = len(units) - len(todo)
        self.progress(stage, done, len(units))
        verify = "verify" in self.cfg.stages
        judge = self.cfg.verify_judge == "all" or (self.cfg.verify_judge == "generated" and stage != "direct")

        async def one(u: Unit) -> None:
            nonlocal done
            stats = st.StageStats()
            async with sem:
                pairs = await u.run(MeteredLLM(llm, self.count, stats), stats)
            dup = Counter(self.dedup.check(p.question) for p in pairs)  # not worth verifying
            pairs = [p for p in pairs if self.dedup.check(p.question) == "new"]
            if verify and pairs:
                vstats = st.StageStats()
                vllm = MeteredLLM(llm, self.count, vstats)
                checked = await asyncio.gather(
                    *(
                        st.verify(
                            vllm,
                            p,
                            u.source_text or self._source_text(p.sources),
                            vstats,
                            attempts=self.cfg.verify_attempts,
                            judge=judge,
                            judge_rewrites=self.cfg.verify_judge != "none",
                            retries=self.cfg.json_retries,
                        )
                        for p in pairs
                    )
                )
                pairs = [p for p in checked if p is not None]
                stats.extra["verify"] = 1  # marks a unit that carries verification figures
                for k, v in vstats.as_dict().items():
                    stats.extra[f"verify_{k}"] = v
            # the collection's dedup is only touched here, on the event loop: the thread writes rows
            new, dup = self._claim(pairs, dup)
            async with self._write_lock:  # one writer at a time (SQLite); the loop keeps serving requests
                await asyncio.to_thread(self._store, u, new, stats, dup)
                done += 1
                await asyncio.to_thread(self.progress, stage, done, len(units))

        await asyncio.gather(*(one(u) for u in todo))

    def _claim(self, pairs: list[QAPair], dup: Counter[str]) -> tuple[list[QAPair], Counter[str]]:
        """The pairs that are still new in the collection (claimed, so a concurrent unit sees them), and the
        duplicate counts with the ones that were not."""
        dup = Counter({"exact": dup["exact"], "near": dup["near"]})
        new = []
        for p in pairs:
            verdict = self.dedup.check(p.question)
            if verdict != "new":
                dup[verdict] += 1
                continue
            self.dedup.add(p.question)
            new.append(p)
        return new, dup

    def _store(self, unit: Unit, pairs: list[QAPair], stats: st.StageStats, dup: Counter[str]) -> None:
        """The unit's new pairs, their sources and its marker, in one transaction (``dup``: duplicates the unit
        left out)."""
        figures = stats.as_dict()
        kinds: Counter[str] = Counter()
        exact = dup["exact"]
        with self.db.session() as s:
            for p in pairs:
                doc_id, chunk_id = p.sources[0]
                row = Reflection(
                    collection_id=self.collection_id,
                    document_id=doc_id,
                    chunk_id=chunk_id,
                    kind=p.kind,
                    question=p.question,
                    answer=p.answer,
                    question_hash=question_hash(p.question),
                )
                try:
                    with s.begin_nested():  # another process stored the same question meanwhile
                        s.add(row)
                        s.flush()
                        s.add_all(
                            ReflectionSource(reflection_id=row.id, document_id=d, chunk_id=c)
                            for d, c in dict.fromkeys(p.sources)
                        )
                        s.flush()
                except IntegrityError:
                    exact += 1
                    continue
                kinds[p.kind] += 1
            figures.update(pairs=sum(kinds.values()), duplicates=exact, near_duplicates=dup["near"])
            s.add(
                ReflectUnit(
                    document_id=self.document_id,
                    stage=unit.stage,
                    work_key=unit.key,
                    stats={**figures, "kinds": dict(kinds)},
                )
            )
        self.finished.add(unit.key)

    async def run(self, llm: LLM) -> dict[str, Any]:
        """The selected stages with as few barriers as their inputs allow: the per-chunk stages (direct, indirect,
        entities) run together; consolidation starts once direct and indirect facts are stored (entity pairs may
        still be in flight); cross-document synthesis, which anchors on every per-chunk kind, starts last."""
        sem = asyncio.Semaphore(self.settings.reflect.concurrency)
        stages = self.cfg.stages
        related: list[tuple[str, float]] = []
        try:
            async with asyncio.TaskGroup() as tg:  # a failing stage cancels the others
                per_chunk = {
                    stage: tg.create_task(self._run_units(llm, stage, self._chunk_units(stage), sem))
                    for stage in stages
                    if stage in CHUNK_STAGES
                }
                if "consolidate" in stages:
                    for stage in ("direct", "indirect"):  # CONSOLIDATE_INPUT
                        if stage in per_chunk:
                            await per_chunk[stage]
                    await self._run_units(llm, "consolidate", self._consolidate_units(), sem)
        except BaseExceptionGroup as group:  # the caller sees the error itself (e.g. BackendError), not a group
            raise group.exceptions[0] from None
        if "cross" in stages:
            units, related = self._cross_units()
            await self._run_units(llm, "cross", units, sem)
        with self.db.session() as s:
            for c in s.scalars(select(Chunk).where(Chunk.document_id == self.document_id)):
                c.reflected_version = PROMPT_VERSION
        return self.summary(related)

    def summary(self, related: list[tuple[str, float]] | None = None) -> dict[str, Any]:
        """Per-document figures: per stage (summed over its units), pairs per kind, totals."""
        by_stage: dict[str, dict[str, int]] = {}
        with self.db.session() as s:
            for stage, stats in s.execute(
                select(ReflectUnit.stage, ReflectUnit.stats).where(ReflectUnit.document_id == self.document_id)
            ):
                agg = by_stage.setdefault(stage, {"units": 0})
                agg["units"] += 1
                for k, v in (stats or {}).items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        agg[k] = agg.get(k, 0) + int(v)
            kinds = {
                kind: n
                for kind, n in s.execute(
                    select(Reflection.kind, func.count(Reflection.id))
                    .where(Reflection.document_id == self.document_id)
                    .group_by(Reflection.kind)
                )
            }
        verify: dict[str, int] = {}
        for figures in by_stage.values():
            for k, v in list(figures.items()):
                if k.startswith("verify_"):
                    verify[k[len("verify_") :]] = verify.get(k[len("verify_") :], 0) + v
                    del figures[k]
            figures.pop("verify", None)
        if verify:
            by_stage["verify"] = verify
        total = {
            k: sum(v.get(k, 0) for v in by_stage.values()) for k in ("tokens_in", "tokens_out", "calls", "unparseable")
        }
        out: dict[str, Any] = {
            "stages": by_stage,
            "kinds": kinds,
            "document_pairs": sum(kinds.values()),
            "pairs": sum(v.get("pairs", 0) for v in by_stage.values()),
            "duplicates": sum(v.get("duplicates", 0) for v in by_stage.values()),
            "near_duplicates": sum(v.get("near_duplicates", 0) for v in by_stage.values()),
            "dropped_in_verification": verify.get("dropped_in_verification", 0),
            "facts_without_question": sum(v.get("facts_without_question", 0) for v in by_stage.values()),
            **total,
        }
        if related is not None:
            out["related_documents"] = [{"document_id": d, "similarity": x} for d, x in related]
        return out
