"""What makes a question (and a reflection's pair) usable, and when two questions are the same one.

Used by the reflect stage (direct facts, clause facts of the parse, the structured stages and verification), by
deduplication, and by the Executive (a plan asks each sub-question once). The three kinds of reflection each have a
check of their own because their questions come from different places: the generator's reply for a stated fact
(:func:`clean_generated_question`), the dependency parse (:func:`usable_parsed_question`), a structured stage's JSON
(:func:`usable_pair`, then :func:`standalone_violations` in verification).
"""

from __future__ import annotations

import hashlib
import re

MIN_QUESTION_WORDS = 3
MAX_GENERATED_QUESTION_WORDS = 40  # a question the generator wrote for a stated fact
MAX_PARSED_QUESTION_WORDS = 30  # a question the dependency parse made
MAX_PAIR_QUESTION_WORDS = 60  # a question of a structured stage's pair
MAX_PAIR_ANSWER_WORDS = 200

# the words a question is built from (question words, auxiliaries, articles, common prepositions): a parsed question
# must carry more than these to be specific
FUNCTION_WORDS = frozenset(
    "who what where when why how is are was were do does did has have had be been "
    "the a an of to in on at by for".split()
)
# words that carry no content when questions and facts are compared: the function words and more
STOP_WORDS = FUNCTION_WORDS | frozenset(
    "with from and or which whom whose many much that this these those it its as into than then can could must may "
    "should would will about per up".split()
)

# a third-person personal pronoun anywhere: a question with one is not self-contained
PERSONAL_PRONOUN = re.compile(r"\b(he|she|they|him|his|hers|their|them)\b", re.I)
# any pronoun (and pro-form of place and time) a parsed question must not carry; a reflexive may: its antecedent is
# the question's own subject. "IT" and "US" in capitals are names ("the IT helpdesk"), not pronouns
UNRESOLVED = re.compile(
    r"\b(?!(?:IT|US)\b)(?i:he|she|they|him|his|hers|their|theirs|them|her|it|its|i|me|my|we|us|our|you|your|there"
    r"|then)\b"
)
# the same without the reader and the writer ("you", "your", "we", "our"): a company's policy speaks as the company to
# its reader ("Submit claims within 30 days", "our headquarters"), and its questions, which name the document, may too
# ("When should you submit claims?"); in a story "you" and "we" are someone the question must name
UNRESOLVED_BUT_READER = re.compile(
    r"\b(?!(?:IT|US)\b)(?i:he|she|they|him|his|hers|their|theirs|them|her|it|its|i|me|my|there|then)\b"
)
# a reference to the source instead of its content (verification refuses it in any pair)
VAGUE = re.compile(
    r"\b(the|this|that) (document|text|passage|article|author|above|excerpt|context|source|chunk)\b"
    r"|\bmentioned above\b",
    re.I,
)
# a sentence of the source that opens with a pronoun or a demonstrative (after an opening quote or parenthesis):
# the name it stands for is in the sentences before it
SOURCE_PRONOUN_START = re.compile(r"^[\"'(]?(he|she|it|they|his|her|its|their|this|these|those)\b", re.I)
# a pair's question or answer that opens with a pronoun or a demonstrative (object pronouns and "that" too)
PAIR_PRONOUN_START = re.compile(r"^(he|she|it|they|him|her|his|hers|its|their|them|this|that|these|those)\b", re.I)
NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


# the context a structured document's question names in front of it ("Acme - Travel Policy > Hotels > What is the
# cap?", memo.reflect.structured): deduplication compares questions of the same context by their own words
CONTEXT_SEP = " > "


def split_context(question: str) -> tuple[str, str]:
    """(context, the question itself) of a question with its context in front; ("", question) without."""
    context, sep, own = question.rpartition(CONTEXT_SEP)
    return (context, own) if sep else ("", question)


# -- identity -------------------------------------------------------------------------------------------------------
def normalise_question(q: str) -> str:
    """Lower case, punctuation as spaces, single spaces: the form in which two questions are the same."""
    return " ".join(re.sub(r"[^\w\s]", " ", q.lower()).split())


def question_hash(q: str) -> str:
    return hashlib.sha256(normalise_question(q).encode()).hexdigest()


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry content, crudely stemmed (plural / third-person ``s`` dropped)."""
    return {
        w[:-1] if len(w) > 3 and w.endswith("s") else w for w in normalise_question(text).split() if w not in STOP_WORDS
    }


# -- shape ----------------------------------------------------------------------------------------------------------
def is_question(text: str, max_words: int) -> bool:
    """Ends with a question mark and has between :data:`MIN_QUESTION_WORDS` and ``max_words`` words."""
    return text.endswith("?") and MIN_QUESTION_WORDS <= len(text.split()) <= max_words


def is_answer(text: str) -> bool:
    """Not empty and at most :data:`MAX_PAIR_ANSWER_WORDS` words."""
    return 0 < len(text.split()) <= MAX_PAIR_ANSWER_WORDS


# -- a question the generator wrote for a stated fact (direct facts) ----------------------------------------------
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


def clean_generated_question(text: str, fact: str) -> str | None:
    """The first line of the generator's reply if it is a usable question about ``fact`` (:func:`grounded`), else
    None. A question with a personal pronoun is refused here (verification would reject it and pay for rewrites from
    the whole chunk; another sample is cheaper)."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = re.sub(r"^(question|q)\s*[:.-]\s*", "", line, flags=re.I).strip().strip('"')
    if not is_question(line, MAX_GENERATED_QUESTION_WORDS) or PERSONAL_PRONOUN.search(line):
        return None
    if normalise_question(line) == normalise_question(fact):
        return None
    if set(NUMBER.findall(fact)) & set(NUMBER.findall(line)):
        return None  # the answer leaks into the question
    fact_words = content_words(fact)
    if fact_words and len(content_words(line) & fact_words) > 0.7 * len(fact_words):
        return None  # the fact copied with a question mark
    return line if grounded(line, fact) else None


# -- a question the dependency parse made (clause facts) ----------------------------------------------------------
def usable_parsed_question(q: str, *, structured: bool = False) -> bool:
    """Short enough, no unresolved pronoun, no reference to the source, and specific: it names something (a name
    after its first word) or carries at least two content words ("Who is lazy?" fits any lazy person). With
    ``structured`` (a structured document: a policy speaks to its reader, and every question is asked with the
    document's headings in front) "you", "your", "we" and "our" may stay, and one content word is enough ("What is
    the depth?" under "HX-220 Specification > Physical design")."""
    words = q.rstrip("?").split()
    named = any(w[:1].isupper() for w in words[1:])
    content = [w for w in words if w.lower() not in FUNCTION_WORDS]
    return (
        MIN_QUESTION_WORDS <= len(words) <= MAX_PARSED_QUESTION_WORDS
        and q.endswith("?")
        and not (UNRESOLVED_BUT_READER if structured else UNRESOLVED).search(q)
        and not VAGUE.search(q)
        and (named or len(content) >= (1 if structured else 2))
    )


def usable_parsed_answer(a: str) -> bool:
    a = a.strip()
    return bool(a) and any(ch.isalnum() for ch in a) and not UNRESOLVED.fullmatch(a)


# -- a structured stage's pair, and verification's rules ---------------------------------------------------------
def usable_pair(question: str, answer: str) -> bool:
    """A parsed pair worth keeping at all (before verification): a question, an answer, and different."""
    q, a = question.strip(), answer.strip()
    return is_question(q, MAX_PAIR_QUESTION_WORDS) and is_answer(a) and normalise_question(q) != normalise_question(a)


def standalone_violations(question: str, answer: str, *, short_answer: bool = False) -> list[str]:
    """Deterministic self-containment violations of a pair (the cheap half of verification). A ``short_answer`` (an
    atomic span answering a question that names its subject: "the basement of his parents' house") may start with
    a possessive; the question may not."""
    out: list[str] = []
    q, a = question.strip(), answer.strip()
    if not is_question(q, MAX_PAIR_QUESTION_WORDS):
        out.append("not a question")
    if not is_answer(a):
        out.append("empty or overlong answer")
    if PAIR_PRONOUN_START.match(q) or PERSONAL_PRONOUN.search(q):
        out.append("pronoun in the question")
    if PAIR_PRONOUN_START.match(a) and not short_answer:
        out.append("answer starts with a pronoun")
    if VAGUE.search(q) or VAGUE.search(a):
        out.append("vague reference to the source")
    if normalise_question(q) == normalise_question(a):
        out.append("the answer repeats the question")
    return out


DERIVED_NUMBER_KINDS = ("indirect_calculated", "indirect_temporal")  # their numbers are computed, not quoted


def ungrounded(answer: str, source: str, kind: str, *, min_coverage: float = 0.5) -> list[str]:
    """Deterministic grounding of an answer in its source text (an addition to MeMo's check, against invented
    facts): its numbers appear in the source (except for computed kinds), and at least ``min_coverage`` of its
    content words do."""
    if not source:
        return []
    out = []
    if kind not in DERIVED_NUMBER_KINDS:
        missing = set(NUMBER.findall(answer)) - set(NUMBER.findall(source))
        if missing:
            out.append(f"numbers not in the source: {', '.join(sorted(missing))}")
    words = content_words(answer)
    if words and len(words & content_words(source)) < min_coverage * len(words):
        out.append("answer not supported by the source")
    return out
