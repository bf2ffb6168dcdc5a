"""Sources of an answer: the reflections of a collection's live documents that support what the Memory model said,
with their stored provenance (documents, chunks).

The Memory model answers closed-book, from its weights; it cannot say where an answer came from. But it was trained
on the collection's reflections (question -> answer pairs), and each reflection keeps the documents and chunks it
was made from (``reflection_sources``). A Memory answer is *supported* when a reflection

- carries the answer's content: every number or code the answer adds to the question is in the reflection's answer,
  every name it adds is in the reflection, and most of the content words it adds are (the answer's own words, not
  the ones it repeats from the question); and
- is about what was asked: the asked question's content words, weighted by their rarity among the collection's
  reflection questions (IDF), are found in the reflection (its question and answer), nearly as much as in the
  reflection most about the question, and a name the question gives is in the reflection or its document (in the
  reflection itself when the name heads a section of that document: the facts under "Varnholt headquarters" are not
  about the Port Emberly office);

and the answer is of the kind asked for (a number for "how many" or "what rate", words for "who"), names what a "how
many" question counts, does not state what the question sets aside ("anywhere other than Port Emberly"), and does not
measure a condition of the question otherwise ("at a 5-minute interval" for "a reading every 15 minutes").

A wrong recall fails the first test (a look-alike fact has another number or name), a recall of another fact the
second (it is about something else, or about another company's policy). An answer no reflection supports is not
given (see :mod:`memo.executive.protocol`): that is how the service abstains. Deleting or replacing a document
deletes its reflections at once (:func:`memo.catalog.remove_document`), so a memory that has not yet been retrained
without it finds no support for the document's old facts: they are abstained on, never served stale.

The test is lexical on purpose (no model in the loop, a few milliseconds for thousands of reflections); its
thresholds are below, each with its reason. They are properties of text, not of any benchmark's wording.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memo.db import Chunk, Document, DocumentStatus, Reflection, ReflectionSource
from memo.memory import is_idk
from memo.questions import CONTEXT_SEP, split_context

# -- thresholds -----------------------------------------------------------------------------------------------------
# share of the answer's own content words (those it does not repeat from the question) found in the reflection: a
# small model rephrases a little ("receive" / "get"), but a majority of what it adds must be there
MIN_COVER = 0.6
# IDF-weighted share of the asked question's content words found in the reflection (its question and answer). Low
# on purpose: a user's question is a paraphrase of the document ("daily food allowance" for "meals are covered by a
# daily allowance"), so a right recall's reflection often holds only a third of the question's weight; a reflection
# about another fact shares only the common words (the company's name, "employees", "policy"), which weigh little
MIN_ABOUT = 0.2
# ... and at least this share of what the collection's reflection most about the question reaches: the recall of a
# neighbouring fact ("parental leave lasts 31 weeks" for "how many days of paid leave do employees get?") is much
# less about the question than the fact that answers it. Not higher: a paraphrased question can be as much about a
# neighbour as about its own fact, and an abstention on a right recall costs an answer
RELATIVE_ABOUT = 0.5
# a sub-question counts only when it is about the question (IDF-weighted share of its content words in the
# question): a planner's drift ("What is the travel policy?") must not answer a question about something else
MIN_GROUNDED = 0.5
# supports within this share of the best one's score are cited too (other phrasings of the same fact, the same fact
# in another document); weaker ones are left out, so that the sources stay precise
KEEP_RELATIVE = 0.8
MAX_SUPPORTS = 5  # reflections cited per answer
# reflections offered to the Memory to choose from (memo.executive.protocol.ask_memory): on handbook_dev's first two
# documents the right one was among the 12 most about the question for 20 of 20 `single` questions
MAX_CANDIDATES = 12
CACHE_SIZE = 32  # collections whose reflections are kept in memory

# -- words ----------------------------------------------------------------------------------------------------------
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be been before being below between
    both but by can cannot could did didn't do does doesn't doing don't down during each either else ever every few
    for from further had has have having he her here hers herself him himself his how however i if in into is isn't
    it its itself just let me might more most must my myself neither no nor not of off on once only or other ought
    our ours ourselves out over own please same shall she should so some such than that the their theirs them
    themselves then there these they this those through thus to too under until up upon us very was wasn't we were
    what whatever when where whether which while who whom whose why will with within without would yes yet you your
    yours yourself yourselves much many since""".split()
)
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90"}
_TOKEN = re.compile(r"[$€£#]?[A-Za-z0-9][A-Za-z0-9'’\-.,:/%]*")
_TRAIL = ".,:/-'’%"
_NUMBER_UNIT = re.compile(r"^(\d+(?:\.\d+)?)-([A-Za-z]+)$")
_PARTS = re.compile(r"[-/.,:]+")


def stem(word: str) -> str:
    """A light suffix stripper (plural, -ly, -ing, -ed, -er, a final e, a doubled consonant), so that "travellers"
    meets "travel", "booked" meets "booking" and "nightly" meets "night". Both sides of every comparison go through
    it; it need not give a word."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ily") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for _ in range(2):  # "travellers" -> "traveller" -> "travel", "covered" -> "cover" -> "cov" (as "cover" is)
        for suffix in ("ing", "ed", "er", "ly"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        else:
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]
    return word


def _number(token: str) -> str:
    t = token.lower().lstrip("$€£#").replace("%", "")
    t = re.sub(r"(?<=\d),(?=\d)", "", t)
    return re.sub(r"(?<=\d)\.0+$", "", t)


@dataclass(frozen=True)
class Terms:
    """What a text says, for comparison: its content words (stemmed; numbers and codes normalised: "$1,200" ->
    "1200", "five" -> "5"), the numbers and codes among them, and the names (capitalised words)."""

    content: frozenset[str]
    numbers: frozenset[str]
    names: frozenset[str]


EMPTY = Terms(frozenset(), frozenset(), frozenset())


def terms(text: str) -> Terms:
    content: set[str] = set()
    numbers: set[str] = set()
    names: set[str] = set()
    initial = True  # the first word of a sentence is capitalised whether or not it is a name
    for m in _TOKEN.finditer(text):
        raw = m.group()
        after = text[m.end() : m.end() + 1]
        token = raw.rstrip(_TRAIL) if raw[-1] in _TRAIL and not raw.endswith("%") else raw
        token = re.sub(r"['’]s$", "", token)
        was_initial, initial = initial, raw[-1] in ".!?:" or after in ("?", "!")
        if not token:
            continue
        unit = _NUMBER_UNIT.match(token)
        if unit:  # "3-day", "15-minute": the number and its unit
            content.update((unit.group(1), stem(unit.group(2).lower())))
            numbers.add(unit.group(1))
        elif any(c.isdigit() for c in token):  # an amount, a date, a code ("HX-220", "INC-0219"): as it is
            key = _number(token)
            content.add(key)
            numbers.add(key)
        else:  # words: "round-the-clock" and "and/or" are their parts
            for part in _PARTS.split(token):
                low = part.lower()
                if low in NUMBER_WORDS:
                    content.add(NUMBER_WORDS[low])
                    numbers.add(NUMBER_WORDS[low])
                elif low not in STOPWORDS and len(low) > 1:
                    key = stem(low.replace("’", "'"))
                    content.add(key)
                    if part[0].isupper() and not was_initial:
                        names.add(key)
    return Terms(frozenset(content), frozenset(numbers), frozenset(names))


# a question that only a number answers: "how many / much / long / far", or one whose subject is a measure within
# two words of its "what" / "which" ("which phone extension", "what is the monthly spending limit", "at what rate")
_HOW_AMOUNT = re.compile(r"\bhow\s+(many|much|long|far)\b", re.I)
_MEASURES = (
    "time|date|year|number|extension|percentage|percent|rate|amount|price|cost|fee|limit|cap|maximum|minimum|total|"
    "temperature|concentration|duration|interval|speed|capacity|budget|salary|threshold|distance|weight|age"
)
_WHAT_MEASURE = re.compile(
    r"\b(?:what|which)\s+(?:(?:is|are|was|were)\s+)?(?:(?:the|a|an)\s+)?(?:[\w'’-]+\s+){0,2}"
    rf"(?:{_MEASURES})s?(?![\w-])",
    re.I,
)
_NAMED = re.compile(r"\b(name|named|called)\b", re.I)  # "the name of the cost centre" asks for a name


_WHO = re.compile(r"^\W*(who|whom|whose)\b", re.I)


def asks_amount(question: str) -> bool:
    """A question that only a number answers: how many, how much, how long, what time, date, rate, limit ... (a
    measure), unless it asks for a name."""
    if _HOW_AMOUNT.search(question):
        return True
    return _WHAT_MEASURE.search(question) is not None and _NAMED.search(question) is None


# a number with its unit ("every 15 minutes", "a 5-minute interval", "two hours"), not a code's ("HX-220", "P1")
_MEASURE = re.compile(rf"(?<![\w.,$€£-])(\d[\d,]*(?:\.\d+)?|{'|'.join(NUMBER_WORDS)})(?:\s+|-)([A-Za-z]+)\b", re.I)
_YES_NO = re.compile(
    r"^\W*(is|are|was|were|do|does|did|can|could|will|would|should|shall|may|might|must|has|have|had)\b", re.I
)


# a number that bounds a range ("over 6 hours", "after 5 years", "3 nights or more") holds for other values too
_BOUND_BEFORE = frozenset(
    "over above more less fewer under below least most up exceeding exceeds exceed beyond after from before until "
    "within longer shorter than max maximum min minimum".split()
)
_BOUND_AFTER = re.compile(r"^\s*(or\s+(more|less|fewer|longer|shorter|over|above|under|below)|and\s+(over|above|up))\b")


def measures(text: str) -> frozenset[tuple[str, str]]:
    """The (unit, number) pairs ``text`` states as a point, not as a bound: ("minut", "15") for "every 15 minutes"
    and for "a 15-minute interval", nothing for "over 6 hours" or "3 nights or more"."""
    found = set()
    for m in _MEASURE.finditer(text):
        unit = m.group(2).lower()
        if unit in STOPWORDS or unit == "per":
            continue
        before = text[max(0, m.start() - 24) : m.start()].lower().split()[-2:]
        if _BOUND_BEFORE & set(before) or _BOUND_AFTER.match(text[m.end() :]):
            continue
        number = m.group(1).lower()
        found.add((stem(unit), NUMBER_WORDS.get(number) or _number(number)))
    return frozenset(found)


_HOW_MANY = re.compile(r"\bhow\s+many\s+([^?.,;:!]*)", re.I)
_EXCLUDING = re.compile(r"\b(?:other\s+than|except(?:\s+for)?|apart\s+from|besides|excluding)\s+([^?.,;:!]*)", re.I)


@dataclass(frozen=True)
class Asked:
    """What a question asks, for matching reflections: its terms without the names it sets aside (``excluded``:
    "anywhere other than Port Emberly" asks about everywhere else) and, for "how many", the words of what it
    counts (``counted``: "car parking spaces")."""

    terms: Terms
    counted: frozenset[str]
    excluded: frozenset[str]
    measures: frozenset[tuple[str, str]] = frozenset()
    amount: bool = False  # only a number answers it (:func:`asks_amount`)
    who: bool = False  # it asks for a person

    def answered_by(self, novel: frozenset[str], numbers: frozenset[str]) -> bool:
        """What an answer adds to the question (``novel``, of which ``numbers``) can answer it: a number where one is
        asked for, words (not a bare date or amount) where a person is."""
        if self.amount and not numbers:
            return False
        return not (self.who and novel <= numbers)

    def fits(self, fact: Fact) -> bool:
        """``fact`` names what is counted (a fact that never does counts something else), does not state a name
        the question sets aside (it answers for that one), and does not measure the question's condition otherwise
        (a battery's life "at a 5-minute interval" does not answer for "a reading every 15 minutes")."""
        if self.counted and not self.counted & fact.qa:
            return False
        if self.excluded & fact.a.content:
            return False
        for unit, number in self.measures:
            stated = {n for u, n in fact.measures if u == unit}
            if stated and number not in stated:
                return False
        return True


def asked(question: str) -> Asked:
    """What ``question`` asks (see :class:`Asked`)."""
    full = terms(question)
    excluded: set[str] = set()
    for aside in _EXCLUDING.finditer(question):
        excluded |= terms("x " + aside.group(1)).names  # "x ": the phrase's first word is not a sentence's first
    counted: list[str] = []
    many = _HOW_MANY.search(question)
    for word in many.group(1).split() if many else ():
        if word.lower() not in STOPWORDS:
            counted.append(word)
        elif counted:  # the counted phrase ends at its first function word ("spaces does", "days of")
            break
    x = frozenset(excluded)
    # a yes/no question's number is what it asks about ("Is the limit 500 dollars?"), not a condition
    conditions = frozenset() if _YES_NO.match(question) else measures(question)
    return Asked(
        Terms(full.content - x, full.numbers, full.names - x),
        terms(" ".join(counted)).content,
        x,
        conditions,
        asks_amount(question),
        _WHO.match(question) is not None,
    )


# -- the index ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """One reflection and its provenance: ``origins`` are (document id, chunk id), the primary source first."""

    reflection_id: str
    question: str
    answer: str
    origins: tuple[tuple[str, str], ...]
    q: Terms = field(default=EMPTY, compare=False)
    a: Terms = field(default=EMPTY, compare=False)
    qa: frozenset[str] = field(default=frozenset(), compare=False)
    measures: frozenset[tuple[str, str]] = field(default=frozenset(), compare=False)


def make_fact(reflection_id: str, question: str, answer: str, origins: Iterable[tuple[str, str]]) -> Fact:
    q, a = terms(question), terms(answer)
    # what the fact measures: its answer's measures, and its question's in units the answer does not measure (a
    # generated question can carry a neighbouring fact's condition; the answer's own is the one it answers for)
    stated = measures(answer)
    units = {u for u, _ in stated}
    stated |= {(u, n) for u, n in measures(question) if u not in units}
    return Fact(reflection_id, question, answer, tuple(dict.fromkeys(origins)), q, a, q.content | a.content, stated)


@dataclass
class Support:
    """A reflection that supports an answer: how much it is about the question and carries the answer."""

    fact: Fact
    about: float
    cover: float

    @property
    def score(self) -> float:
        return round(self.about * self.cover, 4)


@dataclass
class CitedReflection:
    question: str
    answer: str
    score: float


@dataclass
class Passage:
    chunk_id: str
    text: str
    reflections: list[CitedReflection]


@dataclass
class Source:
    """A document that supports an answer, with the passages (chunks) and reflections that do."""

    document_id: str
    title: str
    score: float
    passages: list[Passage]


class SourceIndex:
    """The reflections of one collection's live documents, for attribution. ``titles``: document id -> title;
    ``chunks``: chunk id -> text (of the chunks the reflections were made from)."""

    def __init__(self, facts: list[Fact], titles: dict[str, str], chunks: dict[str, str]) -> None:
        self.facts = facts
        self.titles = titles
        self.chunks = chunks
        df: Counter[str] = Counter()
        for f in facts:
            df.update(f.q.content)
        n = len(facts)
        self._idf = {w: math.log((n + 1) / (c + 1)) + 1.0 for w, c in df.items()}
        self._unseen = math.log(n + 1) + 1.0  # a word no reflection question has: as rare as can be
        self._by_answer: dict[str, list[int]] = {}
        by_word: dict[str, list[int]] = {}
        for i, f in enumerate(facts):
            for w in f.a.content:
                self._by_answer.setdefault(w, []).append(i)
            for w in f.qa:
                by_word.setdefault(w, []).append(i)
        # every word of a document (its title and the chunks its reflections come from): a name the question gives
        # ("... at Tallowfen?") must be in the reflection or in a document it comes from
        words: dict[str, set[str]] = {d: set(terms(t).content) for d, t in titles.items()}
        done: set[str] = set()
        for f in facts:
            for doc_id, chunk_id in f.origins:
                if chunk_id in chunks and doc_id in words and chunk_id not in done:
                    done.add(chunk_id)
                    words[doc_id] |= terms(chunks[chunk_id]).content
        self._doc_words = {d: frozenset(w) for d, w in words.items()}
        # the words of the sections each document's reflections are filed under (their context without the title,
        # memo.reflect.structured): a name that heads a section marks that section's facts, not its neighbours'
        sections: dict[str, set[str]] = {}  # each distinct heading once: many reflections share a section
        for f in facts:
            parts = split_context(f.question)[0].split(CONTEXT_SEP)[1:]
            for doc_id, _ in f.origins:
                sections.setdefault(doc_id, set()).update(parts)
        self._headings = {d: frozenset().union(*(terms(p).content for p in ps)) for d, ps in sections.items()}
        # the reflections with each word in their question or answer, for best_about
        self._postings = {w: np.array(ids, dtype=np.intp) for w, ids in by_word.items()}

    def idf(self, word: str) -> float:
        return self._idf.get(word, self._unseen)

    def _weighted_share(self, words: frozenset[str], within: frozenset[str]) -> float:
        total = sum(self.idf(w) for w in words)
        return sum(self.idf(w) for w in words & within) / total if total else 0.0

    def _names_fit(self, question: Terms, fact: Fact) -> bool:
        """Every name of ``question`` is in ``fact``, or in a document it comes from where no section is headed
        by it."""
        missing = question.names - fact.qa
        return not missing or any(
            missing <= self._doc_words.get(d, frozenset()) and not missing & self._headings.get(d, frozenset())
            for d, _ in fact.origins
        )

    def about(self, question: Terms, fact: Fact) -> float:
        """How much ``fact`` is about ``question``: the IDF-weighted share of the question's content words found in
        the reflection (question and answer); 0 when the question names something its documents never mention."""
        if not self._names_fit(question, fact):
            return 0.0
        return self._weighted_share(question.content, fact.qa)

    def _ranked(self, question: Terms) -> Iterator[tuple[float, Fact]]:
        """The reflections that share a word with ``question``, most about it first, with :meth:`about` (computed
        for every reflection at once, as arrays: a word every reflection has, as a company's name, makes every
        reflection a candidate); those whose names do not fit are left out."""
        total = sum(self.idf(w) for w in question.content)
        if not total or not self.facts:
            return
        shared = np.zeros(len(self.facts))
        for w in question.content:
            postings = self._postings.get(w)
            if postings is not None:
                shared[postings] += self.idf(w)  # a reflection is in a word's postings once
        for i in np.argsort(-shared, kind="stable"):
            if shared[i] <= 0:
                return
            if self._names_fit(question, self.facts[i]):
                yield float(shared[i]) / total, self.facts[i]

    def best_about(self, question: Terms) -> float:
        """How much the collection's reflection most about ``question`` is about it."""
        return next((about for about, _ in self._ranked(question)), 0.0)

    def candidates(self, question: str, *, within: str | None = None, limit: int = MAX_CANDIDATES) -> list[Support]:
        """The reflections that could answer ``question``, for the Memory to choose from (see
        :mod:`memo.executive.protocol`): about it as much as a supporting reflection must be (:meth:`support`), with an
        answer of the kind asked for, one per distinct answer, most about it first. ``within``: as in
        :meth:`support`."""
        if within is not None and not self.grounded(question, within):
            return []
        a = asked(question)
        q = a.terms
        outer = asked(within).terms if within is not None else None
        floor: float | None = None
        found: list[Support] = []
        seen: set[str] = set()
        for about, f in self._ranked(q):
            floor = max(MIN_ABOUT, RELATIVE_ABOUT * about) if floor is None else floor
            if about < floor or len(found) >= limit:
                break
            key = " ".join(f.answer.lower().split())
            novel = f.a.content - q.content  # an answer that adds nothing to the question answers nothing
            if key in seen or not novel or not a.answered_by(novel, f.a.numbers - q.numbers) or not a.fits(f):
                continue
            if outer is None or self.about(outer, f) >= MIN_ABOUT:
                seen.add(key)
                found.append(Support(f, round(about, 4), 1.0))
        return found

    def grounded(self, sub_question: str, question: str) -> bool:
        """``sub_question`` asks about (part of) ``question``, not about something else."""
        sub = terms(sub_question).content
        return bool(sub) and self._weighted_share(sub, terms(question).content) >= MIN_GROUNDED

    def support(self, question: str, answer: str, *, within: str | None = None) -> list[Support]:
        """The reflections that support ``answer`` to ``question``, best first (empty: the answer is unsupported).
        An answer that says it does not know, adds nothing to the question, or is not of the kind asked for
        (:meth:`Asked.answered_by`) is never supported. ``within``: ``question`` is a sub-question of this
        one, which the supporting reflections must be about as well (and ``question`` must be grounded in it)."""
        if is_idk(answer):
            return []
        a, m = asked(question), terms(answer)
        q = a.terms
        novel = m.content - q.content
        numbers = m.numbers - q.numbers
        if not novel or not a.answered_by(novel, numbers):
            return []
        names = m.names - q.content
        candidates: set[int] = set()  # reflections whose answer has at least one of the answer's own words
        for w in novel:
            candidates.update(self._by_answer.get(w, ()))
        carrying: list[tuple[Fact, float]] = []
        for i in candidates:
            f = self.facts[i]
            if not numbers <= f.a.numbers or not names <= f.qa or not a.fits(f):
                continue
            cover = len(novel & f.qa) / len(novel)
            if cover >= MIN_COVER:
                carrying.append((f, cover))
        if not carrying:
            return []
        if within is not None and not self.grounded(question, within):
            return []
        outer = asked(within).terms if within is not None else None
        floor = max(MIN_ABOUT, RELATIVE_ABOUT * self.best_about(q))
        found = []
        for f, cover in carrying:
            about = self.about(q, f)
            if about < floor:
                continue
            if outer is None or self.about(outer, f) >= MIN_ABOUT:
                found.append(Support(f, round(about, 4), round(cover, 4)))
        if not found:
            return []
        found.sort(key=lambda s: (-s.score, len(s.fact.answer), s.fact.reflection_id))
        best = found[0].score
        return [s for s in found if s.score >= KEEP_RELATIVE * best][:MAX_SUPPORTS]

    def cite(self, supports: list[Support]) -> list[Source]:
        """The documents and passages of ``supports`` (best first), grouped by document and chunk."""
        docs: dict[str, Source] = {}
        for s in supports:
            for doc_id, chunk_id in s.fact.origins:
                if doc_id not in self.titles:
                    continue
                src = docs.setdefault(doc_id, Source(doc_id, self.titles[doc_id], s.score, []))
                src.score = max(src.score, s.score)
                passage = next((p for p in src.passages if p.chunk_id == chunk_id), None)
                if passage is None:
                    passage = Passage(chunk_id, self.chunks.get(chunk_id, ""), [])
                    src.passages.append(passage)
                if all(r.question != s.fact.question for r in passage.reflections):
                    passage.reflections.append(CitedReflection(s.fact.question, s.fact.answer, s.score))
        return sorted(docs.values(), key=lambda d: -d.score)


def carries(text: str, content: str, question: str) -> bool:
    """``text`` states what ``content`` adds to ``question`` (the support test between two answers): its numbers and
    names, and most of its own content words."""
    q, c, t = terms(question), terms(content), terms(text)
    novel = c.content - q.content
    if not novel:
        return False
    if not (c.numbers - q.numbers) <= t.numbers or not (c.names - q.content) <= t.content:
        return False
    return len(novel & t.content) / len(novel) >= MIN_COVER


def merge_sources(groups: Iterable[list[Source]]) -> list[Source]:
    """One list of several answers' sources: a document once (its best score, its passages together), best first."""
    out: dict[str, Source] = {}
    for group in groups:
        for src in group:
            have = out.get(src.document_id)
            if have is None:
                out[src.document_id] = Source(src.document_id, src.title, src.score, list(src.passages))
                continue
            have.score = max(have.score, src.score)
            known = {p.chunk_id for p in have.passages}
            have.passages.extend(p for p in src.passages if p.chunk_id not in known)
    return sorted(out.values(), key=lambda d: -d.score)


# -- loading from the database ---------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, str], tuple[tuple[object, ...], SourceIndex]] = {}
_CACHE_LOCK = threading.Lock()


def _marker(session: Session, collection_id: str) -> tuple[object, ...]:
    """Changes whenever a reflection of the collection is added or deleted (a deleted document's go at once)."""
    row = session.execute(
        select(func.count(Reflection.id), func.max(Reflection.created_at)).where(
            Reflection.collection_id == collection_id
        )
    ).one()
    return (row[0], str(row[1]))


def load_index(session: Session, collection_id: str) -> SourceIndex:
    """The source index of a collection's live documents, from the database (cached until its reflections
    change)."""
    key = (str(session.get_bind().engine.url), collection_id)
    marker = _marker(session, collection_id)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == marker:
            return hit[1]
    index = build_index(session, collection_id)
    with _CACHE_LOCK:
        _CACHE[key] = (marker, index)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return index


def build_index(session: Session, collection_id: str) -> SourceIndex:
    live = (Document.collection_id == collection_id) & (Document.status != DocumentStatus.deleted)
    titles = {i: name for i, name in session.execute(select(Document.id, Document.filename).where(live))}
    rows = session.execute(
        select(Reflection.id, Reflection.question, Reflection.answer, Reflection.document_id, Reflection.chunk_id)
        .where(Reflection.collection_id == collection_id)
        .order_by(Reflection.created_at, Reflection.id)
    ).all()
    extra: dict[str, list[tuple[str, str]]] = {}
    for rid, doc_id, chunk_id in session.execute(
        select(ReflectionSource.reflection_id, ReflectionSource.document_id, ReflectionSource.chunk_id)
        .join(Reflection, Reflection.id == ReflectionSource.reflection_id)
        .where(Reflection.collection_id == collection_id)
    ):
        extra.setdefault(rid, []).append((doc_id, chunk_id))
    facts = []
    for rid, question, answer, doc_id, chunk_id in rows:
        origins = [(doc_id, chunk_id), *extra.get(rid, [])]
        if all(d in titles for d, _ in origins):  # every source live (a deleted one takes its pairs with it anyway)
            facts.append(make_fact(rid, question, answer, origins))
    chunk_ids = {c for f in facts for _, c in f.origins}
    chunks: dict[str, str] = {}
    ids = sorted(chunk_ids)
    for start in range(0, len(ids), 500):
        for cid, text in session.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(ids[start : start + 500]))):
            chunks[cid] = text
    return SourceIndex(facts, titles, chunks)
