"""Direct facts of a structured document (a policy, a runbook, a specification: sections, lists, tables), read with
their context (:mod:`memo.ingest.structure`).

- Every question of a sentence in a structured text names where the fact belongs: the document's title, the
  sections above it and, inside a list item, the item's label ("Bereavement") or, for its later sentences, its first
  sentence (:func:`with_context`). "What is the cap?" under "Port Emberly office" and under "Varnholt headquarters"
  are two facts; with their context they are two questions, and the Memory can keep them apart.
- A labelled line ("Severity: SEV-2", an item "Bereavement: 5 days for ...", a table cell "pH range: 0 to 14") is a
  fact with a verbless statement: its question asks for the label (:func:`label_pairs`, kind ``direct_atomic``).
- The later sentences of an item are stated with the item's first sentence or label as their subject
  (:func:`fact_text`), so the answer stands alone ("Owner: Oswin Kettleby." says nothing without its action).
"""

from __future__ import annotations

import re

from memo.ingest.structure import Sentence, short_lead, split_label
from memo.questions import CONTEXT_SEP, MAX_PAIR_QUESTION_WORDS, PERSONAL_PRONOUN, VAGUE, normalise_question
from memo.reflect.pairs import QAPair
from memo.reflect.syntax import KIND_ATOMIC

# nouns of a label that names a person's role: "Owner: Tobias Quarrington" is asked with "Who"
ROLE_NOUNS = {"owner", "author", "lead", "manager", "contact", "head", "coordinator", "maintainer", "approver",
              "founder", "officer", "director", "commander", "host", "sponsor", "chair", "assignee", "reviewer",
              "responsible", "person", "name", "editor", "signatory", "representative", "administrator", "admin",
              "supervisor", "engineer", "agent", "chief", "president", "ceo", "cfo", "cto", "coo"}  # fmt: skip
_NAME = re.compile(r"^(?:(?:Dr|Mr|Mrs|Ms|Prof)\.? )?[A-Z][a-z]+(?:[- ][A-Z][a-z'-]+)+\b")


def _contained(part: str, question: str) -> bool:
    return normalise_question(part) in normalise_question(question)


_CUT = re.compile(r",\s|\s(?:and|or|so|that|which|but)\s")


def clean_part(part: str) -> str:
    """A context part a question may carry: cut before a personal pronoun ("Restore the records and protect them
    with a lock" -> "Restore the records"), nothing that points at the source ("About this document")."""
    if VAGUE.search(part):
        return ""
    m = PERSONAL_PRONOUN.search(part)
    if m:
        head = part[: m.start()]
        cuts = list(_CUT.finditer(head))
        part = head[: cuts[-1].start()] if cuts else head
        part = short_lead(part) if len(part.split()) > 1 else ""
    return part.strip()


def with_context(question: str, context: tuple[str, ...]) -> str:
    """``question`` with the parts of its context it does not already name in front: "Kestrelmoor Logistics - Travel
    Policy > Accommodation > What are hotel stays capped at?". Later parts go first when the whole would be longer
    than a pair's question may be (the title is kept)."""
    parts = [p for p in map(clean_part, context) if p and not _contained(p, question)]
    while parts and len((CONTEXT_SEP.join(parts) + " " + question).split()) > MAX_PAIR_QUESTION_WORDS:
        parts.pop()
    return CONTEXT_SEP.join([*parts, question]) if parts else question


def label_phrase(label: str) -> str:
    """A label as a noun phrase in a question: "Date of incident" -> "the date of incident", "P1" -> "P1", "pH range"
    -> "the pH range"."""
    words = label.split()
    first = words[0]
    if not (first.isupper() or any(ch.isupper() for ch in first[1:]) or any(ch.isdigit() for ch in first)):
        words[0] = first.lower()
    phrase = " ".join(words)
    code = len(words) == 1 and (any(ch.isdigit() for ch in phrase) or phrase.isupper())
    return phrase if code else "the " + phrase


def _wh(label: str, value: str) -> str:
    role = any(w.lower().strip("().") in ROLE_NOUNS for w in label.split())
    return "Who" if role and _NAME.match(value) else "What"


def label_pairs(sentence: Sentence) -> list[QAPair]:
    """A labelled statement's facts: "Severity: SEV-2." -> ("What is the severity?", "SEV-2"); a table row's cells
    ("pH range: 0 to 14; pH accuracy: +/- 0.02 pH.") each on their own."""
    text = sentence.text.rstrip()
    cells = [c.strip() for c in text.rstrip(".").split("; ")]
    labelled = [split_label(c) for c in cells]
    if len(cells) > 1 and all(labelled):
        found = [x for x in labelled if x is not None]
    else:
        one = split_label(text)
        found = [one] if one else []
    out = []
    for label, value in found:
        value = value.strip()
        if not value or len(label.split()) > 6:
            continue
        if len(found) == 1 and value.endswith("."):
            value = value[:-1] if value.count(".") == 1 else value
        phrase = label_phrase(label)
        verb = "are" if phrase.split()[-1].endswith("s") and not phrase.endswith("ss") else "is"
        out.append(QAPair(f"{_wh(label, value)} {verb} {phrase}?", value, KIND_ATOMIC))
    return out


def fact_text(sentence: Sentence, fact: str, first: str | None) -> str:
    """The stated fact of a sentence as its answer: a later sentence of a list item or a labelled paragraph comes with
    the item's label, or its first sentence ``first``, unless ``fact`` (the sentence with its antecedents) already
    holds it."""
    if sentence.first or sentence.kind == "heading":
        return fact
    if sentence.label and not fact.startswith(sentence.label):
        return f"{sentence.label}: {fact}"
    if sentence.lead and first and first not in fact:
        return f"{first} {fact}"
    return fact
