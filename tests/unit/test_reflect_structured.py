"""Direct facts of structured documents (sections, lists, tables): context in every question, labelled lines,
instructions to the reader, facts inside noun phrases and numbers. Invented documents, not the benchmark's."""

from memo.ingest.chunk import chunk_tokens
from memo.ingest.parse import parse
from memo.ingest.structure import read_sentences
from memo.questions import MAX_PAIR_QUESTION_WORDS, usable_parsed_question
from memo.reflect.dedup import Deduplicator, marks
from memo.reflect.direct import KIND_DIRECT, direct_facts, with_antecedents
from memo.reflect.structured import CONTEXT_SEP, clean_part, fact_text, label_pairs, label_phrase, with_context
from memo.reflect.syntax import KIND_ATOMIC, parse_facts

from .fakes import ScriptedLLM

POLICY = b"""# Zorblax Freight - Travel Policy

## Hotels

Hotel stays are capped at $150 per night. The one exception is Lindale, where rents are higher and the cap is
$210 per night.

## Other allowances

- Parking: up to $12 per day at the airport.
- Laundry: $20 per week on trips longer than 5 days. Receipts are not needed.

## Rates

| Vehicle | Rate | Limit |
|---|---|---|
| Own car | $0.40 per mile | 300 miles |
| Motorbike | $0.25 per mile | 150 miles |

## Action items

1. Move the booking tool to a new vendor. Owner: Priya Holm. Due: 3 June 2025.
2. Publish the new hotel caps. Owner: Dario Venn. Due: 9 June 2025.
"""


def pairs_of(text: str) -> dict[str, str]:
    return {p.question: p.answer for p in parse_facts(text, structured=True).pairs}


def test_context_goes_in_front_of_the_question_unless_it_is_already_named():
    ctx = ("Zorblax Freight - Travel Policy", "Hotels")
    assert with_context("What is the cap in Lindale?", ctx) == CONTEXT_SEP.join([*ctx, "What is the cap in Lindale?"])
    assert with_context("What do the hotels cost?", ctx) == "Zorblax Freight - Travel Policy > What do the hotels cost?"
    assert with_context("What is it?", ()) == "What is it?"
    long = ("word " * 50).strip()
    q = with_context("What is the cap?", (long, "Hotels", "x " * 20))
    assert len(q.split()) <= MAX_PAIR_QUESTION_WORDS and q.startswith(long)  # later parts go first


def test_context_parts_carry_no_pronoun_and_no_pointer_to_the_source():
    assert clean_part("Restore the deleted records and protect them with a lock") == "Restore the deleted records"
    assert clean_part("About this document") == ""
    assert clean_part("Give them a call") == ""
    assert with_context("Who is the owner?", ("Policy", "Renew the keys and store them")) == (
        "Policy > Renew the keys > Who is the owner?"
    )


def test_labelled_lines_and_table_cells_are_asked_by_their_label():
    [s] = [s for s in read_sentences(parse(b"Severity: SEV-3. Status: closed.", "text/markdown")) if s.first]
    assert [(p.question, p.answer, p.kind) for p in label_pairs(s)] == [("What is the severity?", "SEV-3", KIND_ATOMIC)]
    text = parse(POLICY, "text/markdown")
    rows = [s for s in read_sentences(text) if s.text.startswith("Own car")]
    assert [(p.question, p.answer) for p in label_pairs(rows[0])] == [
        ("What is the own car rate?", "$0.40 per mile"),
        ("What is the own car limit?", "300 miles"),
    ]
    owner = [s for s in read_sentences(text) if s.text == "Owner: Priya Holm."][0]
    assert [(p.question, p.answer) for p in label_pairs(owner)] == [("Who is the owner?", "Priya Holm")]
    assert label_phrase("P1") == "P1" and label_phrase("Date of incident") == "the date of incident"


def test_a_later_sentence_of_an_item_is_stated_with_its_label():
    text = parse(POLICY, "text/markdown")
    later = [s for s in read_sentences(text) if s.text == "Receipts are not needed."][0]
    assert fact_text(later, later.text, None) == "Laundry: Receipts are not needed."
    assert later.context == ("Zorblax Freight - Travel Policy", "Other allowances", "Laundry")


async def test_structured_chunk_questions_name_their_section_and_keep_look_alikes_apart():
    text = parse(POLICY, "text/markdown")
    [chunk] = chunk_tokens(text, tokens=2000, overlap=0)
    llm = ScriptedLLM(lambda m, t: "What is the cap per night?")  # the generator's question names no section
    pairs, _ = await direct_facts(llm, chunk, variants=1, attempts=1)
    asked = [c["messages"][-1]["content"] for c in llm.calls]
    assert not any(a.startswith(("Hotels", "Zorblax Freight - Travel Policy")) for a in asked)  # headings: no facts
    got = {p.question: p.answer for p in pairs}
    title = "Zorblax Freight - Travel Policy"
    assert got[f"{title} > Hotels > What is the cap in Lindale?"] == "$210 per night"
    assert got[f"{title} > Hotels > What are hotel stays capped at?"] == "$150 per night"
    assert got[f"{title} > Other allowances > What is the parking?"] == "up to $12 per day at the airport"
    assert got[f"{title} > Rates > What is the motorbike rate?"] == "$0.25 per mile"
    # the same label in two action items: two questions, each naming its item
    assert got[f"{title} > Action items > Move the booking tool to a new vendor > Who is the owner?"] == "Priya Holm"
    assert got[f"{title} > Action items > Publish the new hotel caps > Who is the owner?"] == "Dario Venn"
    direct = [p for p in pairs if p.kind == KIND_DIRECT]
    assert direct and all(p.question.startswith(title + CONTEXT_SEP) for p in direct)
    assert all(p.question.startswith(title) for p in pairs)


async def test_a_story_gets_no_context_and_no_structured_rules():
    chunk = parse(b"# A story\n\nTom Reed moved to Leeds in 1998. He bought a bakery there.\n", "text/markdown")
    pairs, _ = await direct_facts(ScriptedLLM(lambda m, t: "Where did Tom Reed move?"), chunk, variants=1)
    assert pairs and not any(CONTEXT_SEP in p.question or p.question.startswith("A story") for p in pairs)


def test_instructions_to_the_reader_are_asked_with_you():
    got = pairs_of("Submit timesheets in Clockwork within 5 days of the end of the month.")
    assert got["Within what time should you submit timesheets in Clockwork?"] == "within 5 days of the end of the month"
    assert got["Where should you submit timesheets within 5 days of the end of the month?"] == "in Clockwork"
    got = pairs_of("Please arrive at 08:45 at the front desk.")
    assert got["When should you arrive at the front desk?"] == "at 08:45"
    # "you" only in a structured text: a story's "you" is unresolved
    assert usable_parsed_question("When should you arrive?", structured=True)
    assert not usable_parsed_question("When should you arrive?")
    assert not any("you" in q for q in {p.question for p in parse_facts("Submit the form by Friday.").pairs})


def test_labelled_lines_are_not_taken_for_instructions():
    assert not any("should you" in q for q in pairs_of("Product school: a 3-day course in the second week."))


def test_facts_inside_noun_phrases_and_numbers():
    assert pairs_of("Meals are covered by a daily allowance of $40.")["What is the daily allowance?"] == "$40"
    assert pairs_of("Members receive a Zorb Card with a monthly limit of $900.")["What is the monthly limit?"] == "$900"
    briefing = pairs_of("Visitors must first complete a 15-minute safety briefing at the front desk.")
    assert briefing["How long is the safety briefing at the front desk?"] == "15 minutes"
    assert pairs_of("Standard phones are replaced every 2 years.")["How often are standard phones replaced?"] == (
        "every 2 years"
    )
    leave = pairs_of("Staff receive 25 days of paid leave per year.")
    assert leave["How many days of paid leave per year do staff receive?"] == "25 days"
    assert leave["What do staff receive?"] == "25 days of paid leave per year"  # the plain question stays


def test_a_clause_of_a_place_names_the_place():
    got = pairs_of("The one exception is Lindale, where rents are higher and the cap is $300 per night.")
    assert got["What is the cap in Lindale?"] == "$300 per night"


def test_it_may_stand_for_the_previous_sentence_subject_in_a_structured_text():
    got = pairs_of("The badge is for staff only. If it is lost, report it within 8 hours to the Acme hotline.")
    assert got["Where should you report the badge within 8 hours?"] == "to the Acme hotline"
    story = {p.question for p in parse_facts("The badge is for staff only. If it is lost, Tom reports it.").pairs}
    assert not any("badge" in q and "report" in q for q in story)


def test_numbers_that_name_things_are_not_times():
    got = pairs_of("The security desk is staffed around the clock on extension 2200.")
    assert "When is the security desk staffed around the clock?" not in got
    assert got["What is the security desk staffed on around the clock?"] == "extension 2200"


def test_look_alike_questions_are_not_near_duplicates():
    d = Deduplicator(0.85)
    a = "Support Runbook > Priorities > P1 > What is the first response target for Premium customers?"
    d.add(a)
    assert d.check(a.replace("P1", "P2")) == "new"
    assert d.check(a.replace("Premium", "Standard")) == "new"
    assert d.check(a) == "exact"
    d.add("What kind of red boxes does Acme sell to the shops in the north of the old town?")
    # same names and numbers: still a duplicate
    assert d.check("What kind of red boxes does Acme sell to the shops in the north of the old town centre?") == "near"
    assert marks("What is the cap in Lindale for 2 nights?") == {"lindale", "2"}


def test_antecedents_stay_in_their_paragraph_in_a_structured_text():
    sentences = ["Owner: Finance, under Jo Park.", "This policy applies to all staff."]
    assert with_antecedents(sentences, blocks=[0, 1]) == sentences  # a new section: not about the line above
    assert with_antecedents(sentences) == [sentences[0], " ".join(sentences)]


def test_it_and_us_in_capitals_are_names_not_pronouns():
    assert (
        pairs_of("The IT helpdesk can be reached at extension 4417.")["What can the IT helpdesk be reached at?"]
        == "extension 4417"
    )
    assert not usable_parsed_question("What is it for?")


def test_short_questions_of_one_section_are_not_near_duplicates_by_their_shared_context():
    d = Deduplicator(0.85)
    ctx = "Hydrowick Probe - Product Specification > Physical design > "
    d.add(ctx + "What is the housing machined from?")
    assert d.check(ctx + "What is the depth?") == "new"
    d.add(ctx + "What kind of housing is machined from titanium in the old plant by the river?")
    assert d.check(ctx + "What kind of housing is machined from titanium in the old plant by the rivers?") == "near"
    other = "Other Probe - Product Specification > Physical design > "
    assert d.check(other + "What kind of housing is machined from titanium in the old plant by the rivers?") == "new"


def test_a_counted_amount_is_asked_with_how_many_in_plain_text_but_not_in_a_story():
    policy = {p.question: p.answer for p in parse_facts("Staff receive 25 days of paid leave per year.").pairs}
    assert policy["How many days of paid leave per year do staff receive?"] == "25 days"
    story = parse_facts("Tom walked 12 miles to the village. He bought 3 loaves of bread there.").pairs
    assert not any(p.question.startswith("How many") for p in story)
