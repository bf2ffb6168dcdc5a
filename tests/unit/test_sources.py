"""Attribution: which reflections support a Memory answer, and the sources (documents, passages) they give."""

from __future__ import annotations

import time

import pytest

from memo.sources import (
    SourceIndex,
    asked,
    asks_amount,
    carries,
    load_index,
    make_fact,
    measures,
    merge_sources,
    stem,
    terms,
)

COMPANY = (
    "Zorblax is headquartered in the town of Varnmouth. Meridel Okonkwo has been the chief executive of Zorblax "
    "since 2019. Zorblax was founded in 2004 by the engineer Tobias Quillfeather. The Zorblax IT helpdesk can be "
    "reached at extension 4417."
)
LEAVE = (
    "Zorblax employees receive 23 days of paid leave per year. Zorblax employees can carry over at most 5 unused "
    "leave days into the next year. Parental leave at Zorblax lasts 31 weeks at full pay."
)
TRAVEL = "The Zorblax travel policy caps hotel stays at $217 per night. Meals are reimbursed up to 58 euros per day."
OTHER = "Fennick Labs is a maker of telescopes in Dunmore. Fennick Labs staff book travel through the Orbit portal."

PAIRS = [  # (question, answer, document, chunk): reflections as the reflect stage writes them
    ("Where is Zorblax headquartered?", "in the town of Varnmouth", "company", "c1"),
    ("Who has been the chief executive of Zorblax since 2019?", "Meridel Okonkwo", "company", "c1"),
    (
        "What does Meridel Okonkwo do?",
        "Meridel Okonkwo has been the chief executive of Zorblax since 2019.",
        "company",
        "c1",
    ),
    ("Who founded Zorblax?", "the engineer Tobias Quillfeather", "company", "c1"),
    ("When was Zorblax founded?", "in 2004", "company", "c1"),
    ("What is the extension of the Zorblax IT helpdesk?", "extension 4417", "company", "c1"),
    ("How many days of paid leave do Zorblax employees receive per year?", "23 days", "leave", "c2"),
    ("What do Zorblax employees receive?", "Zorblax employees receive 23 days of paid leave per year.", "leave", "c2"),
    ("How many unused leave days can Zorblax employees carry over?", "at most 5 unused leave days", "leave", "c2"),
    ("How long does parental leave at Zorblax last?", "31 weeks at full pay", "leave", "c2"),
    ("What does the Zorblax travel policy cap hotel stays at?", "$217 per night", "travel", "c3"),
    ("How much are meals reimbursed per day while travelling?", "up to 58 euros per day", "travel", "c3"),
    ("What does Fennick Labs make?", "telescopes", "other", "c4"),
    ("Through which portal do Fennick Labs staff book travel?", "the Orbit portal", "other", "c4"),
]
TITLES = {"company": "company.md", "leave": "leave-policy.txt", "travel": "travel-policy.md", "other": "fennick.md"}
CHUNKS = {"c1": COMPANY, "c2": LEAVE, "c3": TRAVEL, "c4": OTHER}


@pytest.fixture(scope="module")
def index() -> SourceIndex:
    facts = [make_fact(f"r{i}", q, a, [(d, c)]) for i, (q, a, d, c) in enumerate(PAIRS)]
    return SourceIndex(facts, TITLES, CHUNKS)


def _docs(index: SourceIndex, question: str, answer: str) -> list[str]:
    return [s.document_id for s in index.cite(index.support(question, answer))]


def test_the_right_recall_is_supported_with_its_document_and_passage(index):
    question = "How many days of paid leave do Zorblax employees get each year?"
    supports = index.support(question, "23 days.")
    assert supports and supports[0].fact.answer == "23 days"
    [source] = index.cite(supports)
    assert (source.document_id, source.title) == ("leave", "leave-policy.txt")
    [passage] = source.passages
    assert passage.chunk_id == "c2" and passage.text == LEAVE
    assert {r.answer for r in passage.reflections} >= {"23 days"}
    # the Memory repeating a whole trained sentence, or paraphrasing the question around the fact
    assert _docs(index, question, "Zorblax employees receive 23 days of paid leave per year.") == ["leave"]
    assert _docs(index, "Where is Zorblax headquartered?", "Varnmouth") == ["company"]
    assert _docs(index, "Who runs Zorblax as its chief executive?", "Meridel Okonkwo") == ["company"]
    assert _docs(index, "What is the maximum hotel cost per night on a Zorblax trip?", "$217") == ["travel"]


def test_a_look_alike_with_another_number_does_not_support(index):
    question = "How many days of paid leave do Zorblax employees get each year?"
    assert index.support(question, "24 days") == []  # no reflection says 24
    assert index.support(question, "31 weeks of paid leave") == []  # parental leave: another fact
    assert index.support("What is the extension of the Zorblax IT helpdesk?", "extension 4471") == []
    assert index.support("What is the extension of the Zorblax IT helpdesk?", "extension 4417") != []


def test_a_reflection_about_another_question_does_not_support(index):
    # the founder is a name the documents state, but not the chief executive
    assert index.support("Who is the chief executive of Zorblax?", "Tobias Quillfeather") == []
    assert index.support("Who founded Zorblax?", "Tobias Quillfeather") != []
    # a fact of another company: the question names Zorblax, which Fennick's document never mentions
    assert index.support("Through which portal do Zorblax staff book travel?", "the Orbit portal") == []
    assert index.support("Through which portal do Fennick Labs staff book travel?", "the Orbit portal") != []


def test_no_support_for_idk_an_echo_of_the_question_or_an_amount_without_a_number(index):
    question = "How many days of paid leave do Zorblax employees get each year?"
    assert index.support(question, "I don't know") == []
    assert index.support(question, "") == []
    assert index.support(question, "Zorblax employees get paid leave.") == []  # adds nothing to the question
    assert index.support(question, "paid leave per year") == []
    assert index.support("How much does Zorblax pay for a hotel night?", "hotel stays") == []
    assert asks_amount("How many days?") and asks_amount("At what time does it open?")
    assert not asks_amount("Where is Zorblax headquartered?")


def test_a_sub_question_counts_only_when_it_is_about_the_question(index):
    question = "How many days of paid leave do Zorblax employees get, and who is their chief executive?"
    assert index.support("Who is the chief executive of Zorblax?", "Meridel Okonkwo", within=question) != []
    # a drifting sub-question: supported on its own, but about something the question did not ask
    assert index.support("Where is Zorblax headquartered?", "Varnmouth") != []
    assert index.support("Where is Zorblax headquartered?", "Varnmouth", within=question) == []


def test_words_numbers_and_names_are_normalised():
    t = terms("Hotel stays at Varnmouth cost $1,200.00 for five nights; a 3-day trip.")
    assert {"1200", "5", "3"} <= t.numbers and {"night", "day", "trip", "hotel", "stay"} <= t.content
    assert "varnmouth" in t.names and "hotel" not in t.names  # a sentence's first word is not taken for a name
    assert stem("travellers") == stem("travel") and stem("booked") == stem("booking") and stem("daily") == "day"


def test_carries_and_merge_sources(index):
    q = "How many days of paid leave do Zorblax employees get?"
    assert carries("Employees get 23 days of paid leave.", "23 days", q)
    assert not carries("Employees get 25 days of paid leave.", "23 days", q)
    assert not carries("They get some paid leave.", "23 days", q)
    a = index.cite(index.support(q, "23 days"))
    b = index.cite(index.support("Who founded Zorblax?", "Tobias Quillfeather"))
    merged = merge_sources([a, b, a])
    assert sorted(s.document_id for s in merged) == ["company", "leave"]


@pytest.mark.parametrize(
    "question",
    [
        "How many days of paid leave does a Zorblax employee get?",
        "Who runs Zorblax in Varnmouth?",
        "What does Fennick Labs make at Zorblax?",  # names another company's documents lack
        "What is the weather on Mars?",  # no word of any reflection
        *(q for q, _, _, _ in PAIRS),
    ],
)
def test_the_best_about_is_the_most_about_reflection(index, question):
    """best_about sums word weights over the index at once; it is the largest about() over every reflection."""
    q = terms(question)
    assert index.best_about(q) == pytest.approx(max(index.about(q, f) for f in index.facts), abs=1e-12)


def test_candidates_are_the_reflections_about_the_question_of_the_kind_asked_for(index):
    """What the Memory is offered to choose from: about the question as much as a support must be, most about it
    first, one per distinct answer, and of the kind asked for (a number for "how many")."""
    question = "How many days off a year does a Zorblax employee get?"
    offered = index.candidates(question)
    answers = [c.fact.answer for c in offered]
    assert answers and answers[0] in ("23 days", "Zorblax employees receive 23 days of paid leave per year.")
    assert all(terms(a).numbers for a in answers)  # "how many": no answer without a number
    assert len(set(answers)) == len(answers)
    q = terms(question)
    abouts = [c.about for c in offered]
    assert abouts == sorted(abouts, reverse=True) and min(abouts) >= max(0.2, 0.5 * index.best_about(q)) - 1e-4
    assert all(c.about == pytest.approx(index.about(q, c.fact), abs=1e-4) for c in offered)
    assert index.candidates("What is the weather on Mars?") == []
    assert index.candidates("What does Fennick Labs make at Zorblax?") == []  # no document has both names
    # a sub-question not about the question offers nothing
    assert index.candidates("Where is Zorblax headquartered?", within="How long is parental leave?") == []
    assert len(index.candidates(question, limit=1)) == 1


# an offices guide filed by section, as memo.reflect.structured writes its questions (title > section > question)
OFFICES = [
    ("Quillby - Offices > What is the Harrowgate office?", "The Harrowgate office is on level 4 of Mill House.", "o1"),
    ("Quillby - Offices > Harrowgate office > How many desks are there?", "120 desks", "o1"),
    ("Quillby - Offices > Harrowgate office > How many rooms does Harrowgate have?", "6 meeting rooms", "o1"),
    ("Quillby - Offices > Fenwick headquarters > How many car parking spaces are there?", "35 spaces", "o2"),
    (
        "Quillby - Offices > Fenwick headquarters > Where do you gather when the fire alarm sounds?",
        "at the assembly point in Tanner Square",
        "o2",
    ),
    ("Quillby - Offices > Fenwick headquarters > How many desks are there?", "300 desks", "o2"),
    ("Quillby - Offices > Fire safety > What must visitors at Harrowgate do?", "sign in at reception", "o3"),
    ("Quillby - Travel > Hotels > What are hotel stays capped at?", "$205 per night", "t1"),
    ("Quillby - Travel > Hotels > What is the one exception?", "Harrowgate, where the cap is $245 per night", "t1"),
]


@pytest.fixture(scope="module")
def offices() -> SourceIndex:
    facts = [
        make_fact(f"o{i}", q, a, [("travel" if c.startswith("t") else "offices", c)])
        for i, (q, a, c) in enumerate(OFFICES)
    ]
    chunks = {c: f"{q} {a}" for q, a, c in OFFICES}
    return SourceIndex(facts, {"offices": "offices.md", "travel": "travel.md"}, chunks)


def test_a_name_that_heads_a_section_must_be_in_the_fact(offices):
    """The facts filed under one office's heading are not about another office the same guide names (the other
    office's parking, its fire assembly point); a name the document only mentions still finds its facts."""
    parking = "How many car parking spaces does the Harrowgate office have?"
    assert offices.candidates(parking) == []  # only Fenwick's parking is known: nothing to offer
    assert offices.support(parking, "35 spaces") == []
    gather = [c.fact.answer for c in offices.candidates("Where do Harrowgate staff gather when the fire alarm sounds?")]
    assert "at the assembly point in Tanner Square" not in gather
    assert [c.fact.answer for c in offices.candidates("How many desks does the Harrowgate office have?")][
        0
    ] == "120 desks"
    # "Harrowgate" heads no section of the travel policy: its facts fit a question that names it
    assert offices.support("What is the hotel cap at Harrowgate?", "$245 per night")


def test_a_how_many_question_is_answered_by_a_fact_that_names_what_it_counts(offices):
    """A fact with a number about something else (meeting rooms for desks) is not offered for "how many desks"."""
    offered = [c.fact.answer for c in offices.candidates("How many desks does the Harrowgate office have?")]
    assert offered and "6 meeting rooms" not in offered
    assert offices.support("How many desks does the Harrowgate office have?", "6 meeting rooms") == []
    assert asked("How many more car parking spaces are there?").counted == terms("car parking spaces").content


def test_a_name_the_question_sets_aside_is_not_the_answer(offices):
    """ "Anywhere other than Harrowgate": the exception for Harrowgate answers for Harrowgate, not the question."""
    question = "What is the most a traveller can claim for a hotel night anywhere other than Harrowgate?"
    offered = [c.fact.answer for c in offices.candidates(question)]
    assert offered[0] == "$205 per night" and not any("Harrowgate" in a for a in offered)
    assert offices.support(question, "the cap is $245 per night") == []
    assert offices.support(question, "$205 per night")
    assert asked(question).excluded == terms("at Harrowgate").names


def test_a_question_about_a_measure_is_answered_with_a_number():
    """A question whose subject is a measure (a rate, a limit, an extension, how long) takes a number; one that asks
    for a name does not, even when the name is of a limit."""
    for question in (
        "At what rate per mile is driving reimbursed?",
        "Which phone extension reaches the helpdesk?",
        "What is the monthly spending limit on a company card?",
        "What is the highest concentration the probe can measure?",
        "How long did the outage last?",
    ):
        assert asks_amount(question), question
    for question in (
        "What is the name of the password manager?",
        "What is the name of the spending limit policy?",
        "Which portal must employees use?",
        "What time-off policy applies?",
        "Where do staff gather?",
    ):
        assert not asks_amount(question), question
    facts = [
        make_fact("r0", "How is mileage claimed on a volunteering day?", "at the standard business rate", [("d", "c")]),
        make_fact("r1", "What rate per mile is paid for driving a car on business?", "$0.64 per mile", [("d", "c")]),
    ]
    index = SourceIndex(facts, {"d": "travel.md"}, {"c": "mileage"})
    question = "At what rate per mile is driving a car on a volunteering day reimbursed?"
    assert [c.fact.answer for c in index.candidates(question)] == ["$0.64 per mile"]
    assert index.support(question, "at the standard business rate") == []


BATTERY = [
    ("How long does the battery last at a 5-minute reading interval?", "about 9 months"),
    ("How long does the battery last when the probe reads every 15 minutes?", "18 months"),
    ("How long does the battery last with readings more than 10 minutes apart?", "over 2 years"),  # a bound
    ("How long does the battery last?", "for about 9 months at a 5-minute interval"),
    # a generated question that carries the neighbouring fact's condition: the answer's own condition counts
    ("How long does the battery last at a 15-minute interval?", "7 months at a 2-minute interval"),
]


def test_a_fact_that_measures_the_question_s_condition_otherwise_does_not_answer_it():
    """ "A reading every 15 minutes": the battery life at a 5-minute interval answers another question; a fact that
    states no interval, or bounds one ("over 6 hours"), may still answer it."""
    index = SourceIndex([make_fact(f"b{i}", q, a, [("d", "c")]) for i, (q, a) in enumerate(BATTERY)], {}, {})
    question = "How long does the battery pack last when the probe takes a reading every 15 minutes?"
    offered = [c.fact.answer for c in index.candidates(question)]
    assert "18 months" in offered and "about 9 months" not in offered
    assert "for about 9 months at a 5-minute interval" not in offered and "over 2 years" in offered
    assert "7 months at a 2-minute interval" not in offered
    assert index.support(question, "9 months") == [] and index.support(question, "18 months")
    assert measures("a 15-minute interval") == measures("every 15 minutes") == {("minut", "15")}
    assert measures("flights of more than 6 hours, 3 nights or more, after 5 years") == set()
    assert measures("the HX-220 probe, a $3,000 credit, a P1 ticket") == set()  # codes and amounts are no condition
    assert asked("Is the battery life 18 months at 15 minutes?").measures == set()  # a yes/no question asks it


def test_support_is_fast_on_thousands_of_reflections():
    facts = [
        make_fact(f"r{i}", f"What is the limit number {i} of policy {i % 50}?", f"{i} units of item {i % 7}", [])
        for i in range(5000)
    ]
    index = SourceIndex(facts, {}, {})
    t0 = time.perf_counter()
    for i in range(20):
        index.support(f"What is the limit number {i} of policy {i % 50}?", f"{i} units")
    assert (time.perf_counter() - t0) / 20 < 0.2


# -- the database -------------------------------------------------------------------------------------------------
def test_the_index_follows_the_database_and_a_deleted_document_supports_nothing(settings):
    from memo.catalog import add_document, create_collection, remove_document
    from memo.db import Chunk, Database, JobState, Reflection, ReflectionSource

    db = Database(settings)
    db.migrate()
    with db.session() as s:
        cid = create_collection(s, "hr").id
        up = add_document(s, settings, cid, "leave-policy.txt", LEAVE.encode())
        other = add_document(s, settings, cid, "company.md", COMPANY.encode())
        docs = {"leave": up.document.id, "company": other.document.id}
        for u in (up, other):
            assert u.job is not None
            u.job.state = JobState.succeeded
        chunks = {}
        for name, text in (("leave", LEAVE), ("company", COMPANY)):
            chunk = Chunk(document_id=docs[name], seq=0, text=text)
            s.add(chunk)
            s.flush()
            chunks[name] = chunk.id
        for i, (q, a, d, _) in enumerate(PAIRS):
            if d not in docs:
                continue
            r = Reflection(
                collection_id=cid,
                document_id=docs[d],
                chunk_id=chunks[d],
                kind="direct",
                question=q,
                answer=a,
                question_hash=f"h{i}",
            )
            s.add(r)
            s.flush()
            s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunks[d], document_id=docs[d]))
    question = "How many days of paid leave do Zorblax employees get each year?"
    with db.session() as s:
        index = load_index(s, cid)
        assert load_index(s, cid) is index  # nothing changed: the cached index
    [source] = index.cite(index.support(question, "23 days"))
    assert (source.document_id, source.title) == (docs["leave"], "leave-policy.txt")
    assert source.passages[0].text == LEAVE and source.passages[0].chunk_id == chunks["leave"]

    with db.session() as s:  # the document is deleted: its reflections go at once
        remove_document(s, cid, docs["leave"])
    with db.session() as s:
        after = load_index(s, cid)
    assert after is not index
    assert after.support(question, "23 days") == []  # the not yet retrained memory's recall is not served
    assert after.support("Who founded Zorblax?", "Tobias Quillfeather") != []  # the other document still is
