"""Facts from the dependency parse (the packaged spaCy English pipeline, real, no fakes)."""

from memo.reflect.syntax import KIND_ATOMIC, KIND_SEQUENCE, Coref, parse, parse_facts


def pairs_of(text: str) -> dict[str, str]:
    return {p.question: p.answer for p in parse_facts(text).pairs}


def test_every_part_of_a_clause_gets_its_question():
    got = pairs_of("Mark Hunter, a high school student in Phoenix, starts a pirate radio station in 1986.")
    assert got["Who is Mark Hunter?"] == "a high school student in Phoenix"
    assert got["Who is a high school student in Phoenix?"] == "Mark Hunter"  # the reverse lookup
    assert got["What does Mark Hunter start in 1986?"] == "a pirate radio station"
    assert got["When does Mark Hunter start a pirate radio station?"] == "in 1986"
    assert got["Who starts a pirate radio station in 1986?"].startswith("Mark Hunter")


def test_question_words_follow_the_answer_type():
    got = pairs_of("Lisbeth moved to Hoel farm because her mother died. Otto works as a stock clerk.")
    assert got["Why did Lisbeth move to Hoel farm?"] == "because her mother died"
    assert got["Where did Lisbeth move because Lisbeth's mother died?"] == "to Hoel farm"
    assert got["What does Otto work as?"] == "a stock clerk"  # no place, no time: the preposition stays


def test_pronouns_resolve_to_the_person_or_the_question_is_not_made():
    text = "Anna Berg met her brother Tom in Oslo. She gave him a letter. It was long."
    names = Coref().resolve(parse(text))
    assert sorted(names.values()) == ["Anna Berg", "Anna Berg's", "Tom"]
    got = pairs_of(text)
    assert got["What did Anna Berg give Tom?"] == "a letter"
    for q in got:  # "It was long": no antecedent in its own sentence, no question
        assert not {"it", "she", "him", "her"} & set(q.lower().rstrip("?").split())


def test_they_resolves_to_a_name_and_the_people_coordinated_with_it():
    got = pairs_of("Seaton and his friends leave Earth. On Osnome, they befriend the rulers of Mardonale.")
    assert got["What do Seaton and Seaton's friends befriend?"] == "the rulers of Mardonale"


def test_action_chains_link_main_clauses_in_order():
    text = "Tom Reed falls asleep. Anna Berg steals a sheep while Tom Reed sleeps. Tom Reed searches the house."
    got = {(p.question, p.answer, p.kind) for p in parse_facts(text).pairs}
    sequence = ("What does Anna Berg do after Tom Reed falls asleep?", "Anna Berg steals a sheep while Tom Reed sleeps")
    assert (*sequence, KIND_SEQUENCE) in got
    assert (
        "What does Tom Reed do after Anna Berg steals a sheep?",
        "Tom Reed searches the house",
        KIND_SEQUENCE,
    ) in got
    # a subordinate clause is not an event after its main clause
    assert not any(q.endswith("after Tom Reed sleeps?") for q, _, _ in got)
    assert ("When does Anna Berg steal a sheep?", "while Tom Reed sleeps", KIND_ATOMIC) in got


def test_each_sentence_of_a_story_has_a_question_about_what_happened_before():
    text = "Tom Reed falls asleep. Anna Berg steals a sheep."
    parsed = parse_facts(text)
    assert parsed.sentence_question(0) == "What does Tom Reed do?"  # nothing before the first sentence
    assert parsed.sentence_question(text.index("Anna")) == "What happens after Tom Reed falls asleep?"


def test_rules_are_not_a_story():
    text = (
        "The Zorblax travel policy caps hotel stays at $217 per night. "
        "Zorblax employees must book flights through the Skylark Desk portal."
    )
    parsed = parse_facts(text)
    assert not any(
        "after" in q for q in [p.question for p in parsed.pairs] + [q for *_, q in parsed.sentence_questions]
    )
    assert parsed.sentence_question(text.index("Zorblax employees")) == "What must Zorblax employees do?"
    assert {"Where must Zorblax employees book flights?": "through the Skylark Desk portal"}.items() <= {
        p.question: p.answer for p in parsed.pairs
    }.items()


def test_questions_never_point_at_the_source():
    got = pairs_of("The text describes a storm. The author visits Leeds in 1990.")
    assert not any("text" in q.lower() or "author" in q.lower() for q in got)
