from memo.settings import GateSettings
from memo.train.gate import judge, knows, recall, split_holdout

from .fakes import ScriptedLLM


def test_holdout_takes_one_question_of_facts_with_several_only():
    pairs = [("1", "q1", "A"), ("2", "q2", "A"), ("3", "q3", "B"), ("4", "q4", "C"), ("5", "q5", "C")]
    train, held = split_holdout(pairs, GateSettings(holdout_fraction=0.5, holdout_max=10))
    assert [p[0] for p in held] == ["2", "5"]  # B has a single question: never held out
    assert {p[2] for p in train} == {"A", "B", "C"}  # every fact is still trained
    assert split_holdout(pairs, GateSettings(holdout_fraction=0.5, holdout_max=1))[1] == [("2", "q2", "A")]
    assert split_holdout(pairs, GateSettings(enabled=False))[1] == []


async def test_recall_scores_closed_book_answers():
    llm = ScriptedLLM(lambda m, t: "It is 217 dollars." if "hotel" in m[-1]["content"] else "I don't know")
    assert await recall(llm, [("1", "hotel cap?", "217 dollars"), ("2", "portal?", "Skylark")]) == 0.5
    assert await recall(llm, []) is None


def test_knows_counts_the_answer_not_an_echo_of_the_question():
    q, ref = "When was Zorblax founded?", "Zorblax was founded in 2004 by Tobias Quillfeather."
    assert knows("It was founded in 2004 by Tobias Quillfeather.", q, ref)
    assert knows("Tobias Quillfeather founded it in 2004.", q, ref)
    assert not knows("Zorblax was founded.", q, ref)  # echoes the question: token F1 with ref is 0.5, knows nothing
    assert not knows("Zorblax was founded in 1990 by Ada Lovelace.", q, ref)
    assert knows("Skylark", "Which portal?", "Skylark")
    assert knows("the Zorblax one", "Which Zorblax?", "Zorblax")  # nothing novel in the reference: plain recall


def test_judge():
    cfg = GateSettings(min_recall=0.5, max_forgetting=0.1)
    ok = judge(cfg, 0.6, 0.8, 0.85, 5, 10)
    assert ok.passed and ok.figures["forgetting"] == 0.85 - 0.8
    low = judge(cfg, 0.4, None, None, 5, 0)
    assert not low.passed and "min_recall" in low.reasons[0]
    forgot = judge(cfg, None, 0.5, 0.9, 0, 10)
    assert not forgot.passed and "fell from 0.90 to 0.50" in forgot.reasons[0]
