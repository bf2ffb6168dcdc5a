"""MeMo stage 1, direct facts: one QA pair per explicitly stated fact.

Each sentence of a chunk is a stated fact; the generator writes the question it answers and the sentence
itself is the answer (standalone by construction, no document ids in the text). A sentence usually states several
facts: the dependency parse (:mod:`memo.reflect.syntax`) adds a short-answer pair for each of them (who, what,
where, when, why of every clause, appositions) and the action chains between clauses; a sentence the generator
wrote no usable question for gets the parse's question. Every request is separate, so a batching backend (vLLM, or
the local micro-batcher) decodes them together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass

from memo.ingest.chunk import split_sentences
from memo.llm.base import LLM
from memo.reflect.prompts import direct_messages
from memo.reflect.syntax import KIND_PARSED, ParsedText, parse_facts

log = logging.getLogger(__name__)

KIND_DIRECT = "direct"
MIN_FACT_WORDS = 4
# a personal pronoun in a question: the pair is not self-contained (verification's rule too)
PRONOUN_ANY = re.compile(r"\b(he|she|they|him|his|hers|their|them)\b", re.I)


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    kind: str


def normalise_question(q: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", q.lower()).split())


def question_hash(q: str) -> str:
    return hashlib.sha256(normalise_question(q).encode()).hexdigest()


_STOP = set(
    "a an the of to in on at by for with from and or is are was were be been has have had do does did what which who "
    "whom whose when where why how many much that this these those it its as into than then can could must may "
    "should would will about per up".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry content, crudely stemmed (plural / third-person ``s`` dropped)."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in normalise_question(text).split() if w not in _STOP}


def is_specific(question: str, fact: str, siblings: list[str]) -> bool:
    """The question points at its own fact: it shares more content words with it than with any other fact of
    the chunk (``What is the Acme policy?`` fits every Acme policy sentence and teaches the model nothing)."""
    words = content_words(question)
    own = len(words & content_words(fact))
    return own > 0 and all(len(words & content_words(s)) < own for s in siblings if s != fact)


_GENERIC = {"do", "doe", "did", "done", "happen", "happened", "name", "kind", "type", "called", "reason", "become"}


def _grounded(word: str, vocabulary: set[str]) -> bool:
    """``word`` is in ``vocabulary`` up to its ending: a word there starts with its first 5 letters (all of them when
    it is shorter): 'preparing' / 'preparation', 'move' / 'moved'."""
    stem = word[:5]
    return word in vocabulary or any(w.startswith(stem) for w in vocabulary)


def grounded(question: str, fact: str, max_new: float = 0.4) -> bool:
    """The question is about ``fact``, not invented: every name in it (a capitalised word after the first) is in
    the fact, and at most ``max_new`` of its content words are not (room for a paraphrase: 'How many people work
    at Quill Lamps?' for 'Quill Lamps employs 12 people.'; none for 'How did Mark Hunter create the Pokemon app?')."""
    vocabulary = content_words(fact)
    names = {w.lower() for w in re.findall(r"\b[A-Z][\w'-]*", " ".join(question.split()[1:])) if w != "I"}
    if any(not _grounded(n, vocabulary | {w.lower() for w in fact.split()}) for n in names):
        return False
    words = content_words(question)
    new = [w for w in words if not _grounded(w, vocabulary) and w not in _GENERIC]
    return len(new) <= max_new * len(words)


def clean_question(text: str, fact: str) -> str | None:
    """The first line of the generator's reply if it is a usable question about ``fact`` (:func:`grounded`), else
    None. A question with a personal pronoun is refused here (verification would reject it and pay for rewrites from
    the whole chunk; another sample is cheaper)."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = re.sub(r"^(question|q)\s*[:.-]\s*", "", line, flags=re.I).strip().strip('"')
    if not line.endswith("?") or not 3 <= len(line.split()) <= 40 or PRONOUN_ANY.search(line):
        return None
    if normalise_question(line) == normalise_question(fact):
        return None
    numbers = set(re.findall(r"\d+(?:[.,]\d+)?", fact))
    if numbers & set(re.findall(r"\d+(?:[.,]\d+)?", line)):
        return None  # the answer leaks into the question
    fact_words = content_words(fact)
    if fact_words and len(content_words(line) & fact_words) > 0.7 * len(fact_words):
        return None  # the fact copied with a question mark
    return line if grounded(line, fact) else None


_PRONOUN_START = re.compile(r"^[\"'(]?(he|she|it|they|his|her|its|their|this|these|those)\b", re.I)


def with_antecedents(sentences: list[str], back: int = 2) -> list[str]:
    """Each sentence as a stated fact that names its subject: a sentence that opens with a pronoun ("She then
    sits, ...") comes with the sentences before it (at most ``back``) up to one that does not, where the pronoun's
    name is (the answer stays a quotation of the source, and self-contained)."""
    out = []
    for i in range(len(sentences)):
        start = i
        while start > 0 and i - start < back and _PRONOUN_START.match(sentences[start]):
            start -= 1
        out.append(" ".join(sentences[start : i + 1]))
    return out


async def direct_facts(
    llm: LLM, chunk: str, *, variants: int = 3, attempts: int = 4, parsed: bool = True
) -> tuple[list[QAPair], int]:
    """QA pairs for the stated facts of ``chunk`` and the number of facts that yielded no usable question.

    ``variants`` phrasings per fact: the first greedy, the rest sampled (more phrasings, better recall). With
    ``parsed``, the dependency parse adds the facts of every clause and the action chains (:mod:`memo.reflect.syntax`),
    and a fact the generator wrote no usable question for gets the parse's action-chain question.
    """
    all_sentences = split_sentences(chunk)
    joined = " ".join(all_sentences)
    offsets, at = [], 0
    for s in all_sentences:
        offsets.append(at)
        at += len(s) + 1
    kept = [i for i, s in enumerate(all_sentences) if len(s.split()) >= MIN_FACT_WORDS]
    sentences = [all_sentences[i] for i in kept]
    facts = with_antecedents(sentences)

    async def one(fact: str, variant: int) -> QAPair | None:
        for attempt in range(attempts):
            temperature = 0.0 if variant == 0 and attempt == 0 else 0.9
            q = clean_question(await llm.chat(direct_messages(fact), temperature=temperature, max_tokens=48), fact)
            if q and is_specific(q, fact, sentences):
                return QAPair(q, fact, KIND_DIRECT)
        return None

    async def parse() -> ParsedText | None:
        return await asyncio.to_thread(parse_facts, joined) if parsed else None

    results, facts_of_parse = await asyncio.gather(
        asyncio.gather(*(one(f, v) for f in facts for v in range(variants))), parse()
    )
    pairs: list[QAPair] = []
    seen: set[str] = set()
    failed = 0

    def add(p: QAPair) -> None:
        h = question_hash(p.question)
        if h not in seen:
            seen.add(h)
            pairs.append(p)

    for i, fact in enumerate(facts):
        got = [p for p in results[i * variants : (i + 1) * variants] if p is not None]
        fallback = facts_of_parse.sentence_question(offsets[kept[i]]) if facts_of_parse else None
        if not got and fallback:
            got = [QAPair(fallback, fact, KIND_PARSED)]
        if not got:
            failed += 1
            log.info("no usable question for fact %r", fact[:80])
        for p in got:
            add(p)
    for pp in facts_of_parse.pairs if facts_of_parse else []:
        add(QAPair(pp.question, pp.answer, pp.kind))
    return pairs, failed
