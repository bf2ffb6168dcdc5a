"""The query protocol: the Memory model answers the question closed-book, by choosing among the collection's
reflections about it the one it finds most likely (see :func:`ask_memory`), or else with its own answer if the
reflections support it (:mod:`memo.sources`); that answer is the answer, as it is, with its sources. Failing both,
the Executive plans sub-questions, the Memory answers each (in parallel, no shared context), and the Executive writes
the answer from the supported answers (its notes) alone. When no answer is supported, the service abstains: a fixed
reply and ``abstained``, without a synthesis call.

Why the Memory's own answer is not reworded: a small Executive's rewording can only lose what the Memory recalled.
Why support and not a test for "I don't know": the Memory model does not know what it does not know (it answers an
unanswerable question with a neighbouring fact), and a memory not yet retrained after a document was replaced still
says the old fact, whose reflections are gone.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from memo.executive.prompts import PLAN_SCHEMA, plan_messages, synth_messages
from memo.llm.base import LLM, Scorer, chat_json
from memo.memory import is_idk, memory_messages
from memo.questions import normalise_question
from memo.sources import Source, SourceIndex, carries, merge_sources, terms

# the reply when nothing the Memory said is supported by the collection's documents
ABSTAIN_ANSWER = "I don't know: the documents do not answer this."
MEMORY_MAX_TOKENS = 96
# the rating of an offered reflection: how much likelier the Memory finds its answer as the reply to the reflection's
# own question than to the user's (the mean log-probability per token of each, subtracted: an answer that is likely
# whatever is asked, or that belongs to another question, loses), plus three times the log of the share of the
# question the reflection is about (a look-alike about another office, caregiver or role shares less of it). Weight
# and bar set on handbook_dev's 8 documents (results/eval/handbook/choice.md): against the likelihood given the user's
# question alone (plus twice the log share, bar -3.0), `single` right 0.86 against 0.80, and 0.92 of the questions
# whose document was left out abstaining against 0.87
ABOUT_WEIGHT = 3.0
MIN_CHOICE_RATING = -3.5
SYNTH_MAX_TOKENS = 128


def choice_rating(asked: float, own: float, about: float) -> float:
    """The rating of an offered reflection (see :data:`ABOUT_WEIGHT`): the Memory's mean log-probability per token
    of its answer as the reply to the question (``asked``) minus that as the reply to the reflection's own question
    (``own``), plus :data:`ABOUT_WEIGHT` times the log of its share of the question."""
    return asked - own + ABOUT_WEIGHT * math.log(about)


@dataclass
class Step:
    """One question put to the Memory: its answer, whether it said it does not know, whether the collection's
    reflections support the answer, the documents and passages that do (best first), how many reflections it rated
    (``chosen_from``), whether the answer is the reflection it rated best (``chosen``; else its own greedy answer),
    and the best reflection's ``rating`` (see :func:`ask_memory`)."""

    sub_question: str
    memory_answer: str
    idk: bool
    supported: bool = False
    sources: list[Source] = field(default_factory=list)
    chosen_from: int = 0
    chosen: bool = False
    rating: float | None = None  # the best rated reflection's rating (see ask_memory), chosen or not

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


async def ask_memory(
    memory: LLM, sources: SourceIndex, sub_question: str, question: str, scorer: Scorer | None = None
) -> Step:
    """The Memory's answer to ``sub_question`` and its support (about ``question`` too, when it is a sub-question).

    With a ``scorer`` (the same Memory, rating given answers) the answer is the Memory's choice: the reflections
    about the question (:meth:`SourceIndex.candidates`) are rated by how likely the Memory finds each as its reply
    to the question against as its reply to the reflection's own question, weighed by how much each is about the
    question (:func:`choice_rating`), and the best is the answer if its rating is high enough
    (:data:`MIN_CHOICE_RATING`). A small
    Memory's own greedy answer is often a look-alike of what it learned (a paraphrased question moves its mass to a
    neighbour), yet among the facts of the documents it still rates the right one highest: on handbook_dev's 8
    documents 0.86-0.92 of the `single` questions against 0.31-0.36 for its own answers (results/eval/README.md).
    Its own answer, if supported, is the answer otherwise: generated only then, after the rating (a rating is one
    pass over the offered answers; generating is a pass per token, most of a query's time on a CPU server)."""
    within = None if sub_question == question else question
    messages = memory_messages(sub_question)
    offered = sources.candidates(sub_question, within=within) if scorer is not None else []
    rating = None
    if scorer is not None and offered:
        pairs = [(messages, c.fact.answer) for c in offered] + [
            (memory_messages(c.fact.question), c.fact.answer) for c in offered
        ]
        rated = await scorer.likelihood(pairs)
        asked, own = rated[: len(offered)], rated[len(offered) :]
        rating, best = max(
            ((choice_rating(a, o, c.about), c) for a, o, c in zip(asked, own, offered, strict=True)),
            key=lambda x: x[0],
        )
        rating = round(rating, 4)
        if rating >= MIN_CHOICE_RATING:
            cited = sources.cite([best])
            return Step(sub_question, best.fact.answer, False, True, cited, len(offered), True, rating)
    reply = (await memory.chat(messages, temperature=0.0, max_tokens=MEMORY_MAX_TOKENS)).strip()
    idk = is_idk(reply)
    supports = [] if idk else sources.support(sub_question, reply, within=within)
    return Step(sub_question, reply, idk, bool(supports), sources.cite(supports), len(offered), False, rating)


async def ask_memory_all(
    memory: LLM, sources: SourceIndex, sub_questions: list[str], question: str, scorer: Scorer | None = None
) -> list[Step]:
    """The parallel memory step: every sub-question of ``question`` put to the Memory at once, each on its own (no
    shared context), as :func:`ask_memory` answers it."""
    return list(await asyncio.gather(*(ask_memory(memory, sources, q, question, scorer) for q in sub_questions)))


def _no_new_numbers(text: str, notes: list[Step], question: str) -> bool:
    """Every number of ``text`` is in a note or the question (a synthesis must not invent an amount)."""
    known = terms(question).numbers.union(*(terms(s.memory_answer).numbers for s in notes))
    return terms(text).numbers <= known


async def answer(
    question: str,
    *,
    executive: LLM,
    memory: LLM,
    sources: SourceIndex,
    max_sub: int = 4,
    scorer: Scorer | None = None,
) -> Answer:
    first = await ask_memory(memory, sources, question, question, scorer)
    if first.supported:  # what the Memory knew, as it said it: no plan, no synthesis
        return Answer(question, first.memory_answer, executive.name, memory.name, False, first.sources, [first])
    subs = await plan(executive, question, max_sub)
    rest = await ask_memory_all(memory, sources, [q for q in subs if q != question], question, scorer)
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
