"""The query protocol: the Memory model answers the question closed-book; an answer that the collection's reflections
support (:mod:`memo.sources`) is the answer, as it is, with its sources. Otherwise the Executive plans sub-questions,
the Memory answers each (in parallel, no shared context), and the Executive writes the answer from the supported
answers (its notes) alone. When no answer is supported, the service abstains: a fixed reply and ``abstained``, without
a synthesis call.

Why the Memory's own answer is not reworded: a small Executive's rewording can only lose what the Memory recalled.
Why support and not a test for "I don't know": the Memory model does not know what it does not know (it answers an
unanswerable question with a neighbouring fact), and a memory not yet retrained after a document was replaced still
says the old fact, whose reflections are gone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from memo.executive.prompts import PLAN_SCHEMA, plan_messages, synth_messages
from memo.llm.base import LLM, chat_json
from memo.memory import is_idk, memory_messages
from memo.questions import normalise_question
from memo.sources import Source, SourceIndex, Support, carries, merge_sources, terms

# the reply when nothing the Memory said is supported by the collection's documents
ABSTAIN_ANSWER = "I don't know: the documents do not answer this."
MEMORY_MAX_TOKENS = 96
SAMPLE_TEMPERATURE = 1.0  # the Memory's own distribution: its second choices, not noise added on top
SYNTH_MAX_TOKENS = 128


@dataclass
class Step:
    """One question put to the Memory: its answer, whether it said it does not know, whether the collection's
    reflections support the answer, the documents and passages that do (best first), and how many answers were
    sampled to find it."""

    sub_question: str
    memory_answer: str
    idk: bool
    supported: bool = False
    sources: list[Source] = field(default_factory=list)
    drawn: int = 0  # answers sampled after an unsupported greedy one (see ask_memory)

    @property
    def score(self) -> float:
        return max((s.score for s in self.sources), default=0.0)


@dataclass
class Answer:
    """``abstained``: no answer of the Memory was supported, ``answer`` is :data:`ABSTAIN_ANSWER`. ``sources``: the
    documents and passages behind the answer given, best first."""

    question: str
    answer: str
    executive: str
    memory: str
    abstained: bool = False
    sources: list[Source] = field(default_factory=list)
    trace: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sub_questions(value: Any) -> list[str]:
    subs = value["sub_questions"] if isinstance(value, dict) else value
    if not isinstance(subs, list):
        raise TypeError("sub_questions is not a list")
    return [s.strip() for s in subs if isinstance(s, str) and s.strip()]


async def plan(executive: LLM, question: str, max_sub: int) -> list[str]:
    """Sub-questions for ``question``; the question itself is always asked first (a plan that cannot be
    parsed degrades to just the question)."""
    subs = await chat_json(
        executive,
        plan_messages(question, max_sub),
        schema=PLAN_SCHEMA,
        convert=_sub_questions,
        retries=1,
        max_tokens=128,
    )
    out: list[str] = []
    seen: set[str] = set()
    for q in [question, *(subs or [])]:
        key = normalise_question(q)
        if key and key not in seen:
            seen.add(key)
            out.append(q)
    return out[:max_sub]


async def ask_memory(memory: LLM, sources: SourceIndex, sub_question: str, question: str, samples: int = 0) -> Step:
    """The Memory's answer to ``sub_question`` and its support (about ``question`` too, when it is a sub-question).

    An unsupported greedy answer is often a look-alike of the fact the Memory holds a little less surely (a paraphrased
    question moves its mass to a neighbour): then ``samples`` more answers are drawn, and the one the collection's
    reflections support (most drawn, then best supported) is the answer. An answer no reflection supports still is
    never given, so drawing more costs calls, not trust."""
    within = None if sub_question == question else question

    async def draw(temperature: float) -> tuple[str, list[Support]]:
        reply = await memory.chat(memory_messages(sub_question), temperature=temperature, max_tokens=MEMORY_MAX_TOKENS)
        reply = reply.strip()
        return reply, [] if is_idk(reply) else sources.support(sub_question, reply, within=within)

    reply, supports = await draw(0.0)
    if supports or samples <= 0:
        return Step(sub_question, reply, is_idk(reply), bool(supports), sources.cite(supports))
    drawn = await asyncio.gather(*(draw(SAMPLE_TEMPERATURE) for _ in range(samples)))
    # supported answers grouped by the reflection that supports them best: "$245" and "$245 per night" are one fact
    votes: dict[str, list[tuple[str, list[Support]]]] = {}
    for text, sup in drawn:
        if sup:
            votes.setdefault(sup[0].fact.reflection_id, []).append((text, sup))
    if not votes:
        return Step(sub_question, reply, is_idk(reply), False, [], drawn=samples)
    group = max(votes.values(), key=lambda g: (len(g), g[0][1][0].score))
    text, sup = Counter(t for t, _ in group).most_common(1)[0][0], group[0][1]
    return Step(sub_question, text, False, True, sources.cite(sup), drawn=samples)


def _no_new_numbers(text: str, notes: list[Step], question: str) -> bool:
    """Every number of ``text`` is in a note or the question (a synthesis must not invent an amount)."""
    known = terms(question).numbers.union(*(terms(s.memory_answer).numbers for s in notes))
    return terms(text).numbers <= known


async def answer(
    question: str, *, executive: LLM, memory: LLM, sources: SourceIndex, max_sub: int = 4, samples: int = 0
) -> Answer:
    first = await ask_memory(memory, sources, question, question, samples)
    if first.supported:  # what the Memory knew, as it said it: no plan, no synthesis
        return Answer(question, first.memory_answer, executive.name, memory.name, False, first.sources, [first])
    subs = await plan(executive, question, max_sub)
    rest = await asyncio.gather(*(ask_memory(memory, sources, q, question, samples) for q in subs if q != question))
    trace = [first, *rest]
    notes = sorted((s for s in trace if s.supported), key=lambda s: -s.score)
    if not notes:  # nothing supported: abstain, no synthesis call
        return Answer(question, ABSTAIN_ANSWER, executive.name, memory.name, True, [], trace)
    text = (
        await executive.chat(
            synth_messages(question, [(s.sub_question, s.memory_answer) for s in notes]),
            temperature=0.0,
            max_tokens=SYNTH_MAX_TOKENS,
        )
    ).strip()
    carried = [s for s in notes if carries(text, s.memory_answer, s.sub_question)]
    if carried and _no_new_numbers(text, notes, question):
        return Answer(
            question, text, executive.name, memory.name, False, merge_sources(s.sources for s in carried), trace
        )
    best = notes[0]  # the synthesis lost what the notes said (or made up a number): the best-supported note
    return Answer(question, best.memory_answer, executive.name, memory.name, False, best.sources, trace)
