"""MeMo stage 1, direct facts: one QA pair per explicitly stated fact.

Each sentence of a chunk is a stated fact; the generator writes the question it answers and the sentence
itself is the answer (standalone by construction, no document ids in the text). A sentence usually states several
facts: each of its atomic spans (a clause, an apposition, a subordinate clause: :func:`answer_spans`) is also the
short answer of a question the generator writes for it in the context of its sentence (answer-aware question
generation, kind ``direct_atomic``); rule checks keep only questions of the answer's type that do not give the
answer away. Every request is separate, so a batching backend (vLLM, or the local micro-batcher) decodes them
together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass

from memo.ingest.chunk import split_sentences
from memo.llm.base import LLM
from memo.reflect.prompts import atomic_messages, direct_messages

log = logging.getLogger(__name__)

KIND_DIRECT = "direct"
KIND_ATOMIC = "direct_atomic"
MIN_FACT_WORDS = 4
MAX_SPAN_WORDS = 20
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


# -- atomic facts: short answers ---------------------------------------------------------------------------------
_SPAN_CUT = re.compile(
    r"[,;:()\"]|\b(?:and|but|who|whom|which|that|because|when|after|before|while|until|where|if|though|although|since"
    r"|as|so)\b"
)
_LEAD = re.compile(r"^(?:and|but|who|whom|which|that)\s+", re.I)


def answer_spans(sentence: str) -> list[str]:
    """The atomic answers a sentence states: its pieces between punctuation, coordinating words and relative
    pronouns, a subordinate clause keeping its connector ("because his sister lived there"). Pieces with a content
    word, 1 to ``MAX_SPAN_WORDS`` words, shorter than the sentence, in order, without repeats."""
    cuts = [0, *(m.start() for m in _SPAN_CUT.finditer(sentence)), len(sentence)]
    out: list[str] = []
    whole = normalise_question(sentence)
    for a, b in zip(cuts, cuts[1:], strict=False):
        piece = _LEAD.sub("", sentence[a:b].strip(" ,;:()\"'.!?")).strip(" ,;:()\"'.!?")
        if (
            piece
            and len(piece.split()) <= MAX_SPAN_WORDS
            and content_words(piece)
            and normalise_question(piece) != whole
            and piece not in out
        ):
            out.append(piece)
    return out


_WHY = ("because", "to", "so", "since", "as", "for", "in order", "out of", "due")
_WHEN = ("when", "after", "before", "while", "until", "during", "once", "since", "as soon", "by the time", "on", "in")
_TIME = re.compile(
    r"\b(\d{2,4}|day|days|night|year|years|morning|evening|week|weeks|month|months|later|earlier|time|age|hour|hours"
    r"|minutes?|century|january|february|march|april|may|june|july|august|september|october|november|december)\b",
    re.I,
)
_WHERE = ("in", "at", "from", "to", "into", "on", "near", "inside", "outside", "behind", "under", "across", "through",
          "toward", "towards", "onto", "off", "out of", "back to", "home")  # fmt: skip
_NOT_NOUN = set(_WHY) | set(_WHEN) | set(_WHERE) | {"if", "though", "although", "where", "but", "and", "who", "which"}
_NUMBER_WORDS = re.compile(
    r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|"
    r"thousand|million|several|many|few|dozen)\b",
    re.I,
)


_DETERMINERS = ("a", "an", "the", "his", "her", "their", "its", "one", "two", "three", "some", "several", "many")


def _starts(span: str, words: tuple[str, ...] | set[str]) -> bool:
    low = span.lower()
    return any(low == w or low.startswith(w + " ") for w in words)


_COPULA = re.compile(r"^(what|who|which)\s+(is|are|was|were)\b", re.I)


def fits_answer(question: str, answer: str) -> bool:
    """The question asks for the kind of thing the answer is (by its question word): why -> a reason, when -> a
    time, where -> a place, who -> a name or a noun phrase, how many/much/long/old -> an amount, "what is X?" -> a
    noun phrase. Any other question is refused: its answer's type cannot be checked by a rule, and the packaged
    135M generator mostly pairs such questions with a span that does not answer them."""
    q = question.lower().split()
    if not q:
        return False
    first = q[0] if q[0] not in ("in", "on", "at", "for", "to", "from", "with", "by") else (q[1] if len(q) > 1 else "")
    if first == "why":
        return _starts(answer, _WHY)
    if first == "when":
        return _starts(answer, _WHEN) or bool(_TIME.search(answer))
    if first == "where":
        return _starts(answer, _WHERE) or answer[:1].isupper()
    if first in ("who", "whom", "whose"):
        return not _starts(answer, _NOT_NOUN) and (answer[:1].isupper() or _starts(answer, _DETERMINERS))
    if first == "how" and len(q) > 1 and q[1] in ("many", "much", "long", "old", "far", "often"):
        return bool(_NUMBER_WORDS.search(answer))
    # "what is X?" asks for a noun phrase; other what/which/how questions have no type a rule can check
    return bool(_COPULA.match(question)) and (
        answer[:1].isupper() or _starts(answer, _DETERMINERS) or answer[:1].isdigit()
    )


def atomic_question(text: str, sentence: str, answer: str) -> str | None:
    """The generator's reply as the question of ``answer`` in ``sentence``, if usable: a question without pronouns,
    every content word of it taken from the sentence (no invented or few-shot names), about the sentence outside
    the answer, of the answer's type (a "what is X?" answer is a noun phrase), not giving the answer away (at
    most half of the answer's content words in it)."""
    q = clean_question(text, sentence)
    if q is None or not fits_answer(q, answer):
        return None
    qw, aw, sw = content_words(q), content_words(answer), content_words(sentence)
    if not aw or len(qw & aw) > 0.5 * len(aw):
        return None
    if not all(_grounded(w, sw) or w in _GENERIC for w in qw) or not (qw - aw) & sw:
        return None
    return q


async def direct_facts(
    llm: LLM, chunk: str, *, variants: int = 3, attempts: int = 4, atomic: bool = True, atomic_attempts: int = 2
) -> tuple[list[QAPair], int]:
    """QA pairs for the stated facts of ``chunk`` and the number of facts that yielded no usable question.

    ``variants`` phrasings per fact: the first greedy, the rest sampled (more phrasings, better recall). With
    ``atomic``, each answer span of a fact gets a question too (greedy first, then sampled, ``atomic_attempts`` in
    all).
    """
    sentences = [s for s in split_sentences(chunk) if len(s.split()) >= MIN_FACT_WORDS]
    facts = with_antecedents(sentences)

    async def one(fact: str, variant: int) -> QAPair | None:
        for attempt in range(attempts):
            temperature = 0.0 if variant == 0 and attempt == 0 else 0.9
            q = clean_question(await llm.chat(direct_messages(fact), temperature=temperature, max_tokens=48), fact)
            if q and is_specific(q, fact, sentences):
                return QAPair(q, fact, KIND_DIRECT)
        return None

    async def span(fact: str, answer: str) -> QAPair | None:
        for attempt in range(atomic_attempts):
            temperature = 0.0 if attempt == 0 else 0.7
            reply = await llm.chat(atomic_messages(fact, answer), temperature=temperature, max_tokens=40)
            q = atomic_question(reply, fact, answer)
            if q and is_specific(q, fact, sentences):
                return QAPair(q, answer, KIND_ATOMIC)
        return None

    spans = [(f, a) for f, s in zip(facts, sentences, strict=True) for a in answer_spans(s)] if atomic else []
    results, atomic_pairs = await asyncio.gather(
        asyncio.gather(*(one(f, v) for f in facts for v in range(variants))),
        asyncio.gather(*(span(f, a) for f, a in spans)),
    )
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
    for ap in atomic_pairs:
        if ap is not None and question_hash(ap.question) not in seen:
            seen.add(question_hash(ap.question))
            pairs.append(ap)
    return pairs, failed
