"""MeMo stage 1, direct facts: one QA pair per explicitly stated fact.

Each sentence of a chunk is a stated fact; the generator writes the question it answers and the sentence
itself is the answer (standalone by construction, no document ids in the text). A sentence usually states several
facts: the dependency parse (:mod:`memo.reflect.syntax`) adds a short-answer pair for each of them (who, what,
where, when, why of every clause, appositions) and the action chains between clauses; a sentence the generator
wrote no usable question for (:func:`memo.questions.clean_generated_question`) gets the parse's question. Every
request is separate, so a batching backend (vLLM, or the local micro-batcher) decodes them together.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import replace

from memo.ingest.structure import is_structured, read_sentences
from memo.llm.base import LLM
from memo.questions import SOURCE_PRONOUN_START, clean_generated_question, is_specific, question_hash
from memo.reflect.pairs import QAPair
from memo.reflect.prompts import direct_messages
from memo.reflect.structured import fact_text, label_pairs, with_context
from memo.reflect.syntax import KIND_PARSED, ParsedText, parse_facts

log = logging.getLogger(__name__)

KIND_DIRECT = "direct"
MIN_FACT_WORDS = 4


def with_antecedents(sentences: list[str], back: int = 2, blocks: list[int] | None = None) -> list[str]:
    """Each sentence as a stated fact that names its subject: a sentence that opens with a pronoun ("She then
    sits, ...") comes with the sentences before it (at most ``back``) up to one that does not, where the pronoun's
    name is (the answer stays a quotation of the source, and self-contained). With ``blocks`` (each sentence's
    paragraph in a structured text) not across a paragraph: "This policy applies ..." under a new heading is not
    about the line above the heading."""
    out = []
    for i in range(len(sentences)):
        start = i
        while start > 0 and i - start < back and SOURCE_PRONOUN_START.match(sentences[start]):
            if blocks is not None and blocks[start - 1] != blocks[start]:
                break
            start -= 1
        out.append(" ".join(sentences[start : i + 1]))
    return out


async def direct_facts(
    llm: LLM, chunk: str, *, variants: int = 3, attempts: int = 4, parsed: bool = True
) -> tuple[list[QAPair], int]:
    """QA pairs for the stated facts of ``chunk`` and the number of facts that yielded no usable question.

    ``variants`` phrasings per fact: the first greedy, the rest sampled (more phrasings, better recall). With
    ``parsed``, the dependency parse adds the facts of every clause and the action chains (:mod:`memo.reflect.syntax`),
    and a fact the generator wrote no usable question for gets the parse's action-chain question. In a structured
    chunk (sections, lists, tables: :mod:`memo.reflect.structured`) headings are context, not facts: every question
    names the headings (and the list item) it sits under, and labelled statements get their own pairs.
    """
    structured = is_structured(chunk)
    read = [s for s in read_sentences(chunk) if s.kind != "heading"]
    all_sentences = [s.text for s in read]
    joined = " ".join(all_sentences)
    offsets, at = [], 0
    for s in all_sentences:
        offsets.append(at)
        at += len(s) + 1
    kept = [i for i, s in enumerate(all_sentences) if len(s.split()) >= MIN_FACT_WORDS]
    sentences = [all_sentences[i] for i in kept]
    facts = with_antecedents(sentences, blocks=[read[i].block for i in kept] if structured else None)
    context: list[tuple[str, ...]] = [s.context if structured else () for s in read]
    if structured:
        firsts = {s.block: s.text for s in read if s.first}
        facts = [fact_text(read[kept[i]], f, firsts.get(read[kept[i]].block)) for i, f in enumerate(facts)]

    async def one(fact: str, variant: int) -> QAPair | None:
        for attempt in range(attempts):
            temperature = 0.0 if variant == 0 and attempt == 0 else 0.9
            q = clean_generated_question(
                await llm.chat(direct_messages(fact), temperature=temperature, max_tokens=48), fact
            )
            if q and is_specific(q, fact, sentences):
                return QAPair(q, fact, KIND_DIRECT)
        return None

    async def parse() -> ParsedText | None:
        if not parsed:
            return None
        # a structured text's sentences (items, table rows, headings' first lines) keep their boundaries
        return await asyncio.to_thread(
            parse_facts, joined, structured=structured, starts=offsets if structured else None
        )

    results, facts_of_parse = await asyncio.gather(
        asyncio.gather(*(one(f, v) for f in facts for v in range(variants))), parse()
    )
    pairs: list[QAPair] = []
    seen: set[str] = set()
    failed = 0

    def add(p: QAPair, where: int, ctx: tuple[str, ...] | None = None) -> None:
        ctx = context[where] if ctx is None else ctx
        p = replace(p, question=with_context(p.question, ctx)) if ctx else p
        h = question_hash(p.question)
        if h not in seen:
            seen.add(h)
            pairs.append(p)

    if structured:  # first: a labelled line's own pair wins over the question of the whole line
        for i, sentence in enumerate(read):
            # the question names its label; a later line of an item ("Owner: ...") also names the item
            for p in label_pairs(sentence):
                add(p, i, sentence.headings + ((sentence.lead,) if sentence.lead and not sentence.first else ()))
    for i, fact in enumerate(facts):
        got = [p for p in results[i * variants : (i + 1) * variants] if p is not None]
        fallback = facts_of_parse.sentence_question(offsets[kept[i]]) if facts_of_parse else None
        if not got and fallback:
            got = [QAPair(fallback, fact, KIND_PARSED)]
        if not got:
            failed += 1
            log.info("no usable question for fact %r", fact[:80])
        for p in got:
            add(p, kept[i])
    for pp, start in zip(facts_of_parse.pairs, facts_of_parse.pair_starts, strict=True) if facts_of_parse else []:
        add(pp, max(0, bisect.bisect_right(offsets, start) - 1))
    return pairs, failed
