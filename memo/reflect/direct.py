"""MeMo stage 1, direct facts: one QA pair per explicitly stated fact.

Each sentence of a chunk is a stated fact; the generator writes the question it answers and the sentence
itself is the answer (standalone by construction, no document ids in the text). Every sentence is a separate
request, so a batching backend (vLLM, or the local micro-batcher) decodes them together.
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

log = logging.getLogger(__name__)

KIND_DIRECT = "direct"
MIN_FACT_WORDS = 4


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


def clean_question(text: str, fact: str) -> str | None:
    """The first line of the generator's reply if it is a usable question, else None."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = re.sub(r"^(question|q)\s*[:.-]\s*", "", line, flags=re.I).strip().strip('"')
    if not line.endswith("?") or not 3 <= len(line.split()) <= 40:
        return None
    if normalise_question(line) == normalise_question(fact):
        return None
    numbers = set(re.findall(r"\d+(?:[.,]\d+)?", fact))
    if numbers & set(re.findall(r"\d+(?:[.,]\d+)?", line)):
        return None  # the answer leaks into the question
    fact_words = content_words(fact)
    if fact_words and len(content_words(line) & fact_words) > 0.7 * len(fact_words):
        return None  # the fact copied with a question mark
    return line


async def direct_facts(llm: LLM, chunk: str, *, variants: int = 3, attempts: int = 4) -> tuple[list[QAPair], int]:
    """QA pairs for the stated facts of ``chunk`` and the number of facts that yielded no usable question.

    ``variants`` phrasings per fact: the first greedy, the rest sampled (more phrasings, better recall).
    """
    facts = [s for s in split_sentences(chunk) if len(s.split()) >= MIN_FACT_WORDS]

    async def one(fact: str, variant: int) -> QAPair | None:
        for attempt in range(attempts):
            temperature = 0.0 if variant == 0 and attempt == 0 else 0.9
            q = clean_question(await llm.chat(direct_messages(fact), temperature=temperature, max_tokens=48), fact)
            if q and is_specific(q, fact, facts):
                return QAPair(q, fact, KIND_DIRECT)
        return None

    results = await asyncio.gather(*(one(f, v) for f in facts for v in range(variants)))
    pairs: list[QAPair] = []
    seen: set[str] = set()
    failed = 0
    for i, fact in enumerate(facts):
        got = [p for p in results[i * variants : (i + 1) * variants] if p is not None]
        if not got:
            failed += 1
            log.info("no usable question for fact %r", fact[:80])
        for p in got:
            h = question_hash(p.question)
            if h not in seen:
                seen.add(h)
                pairs.append(p)
    return pairs, failed
