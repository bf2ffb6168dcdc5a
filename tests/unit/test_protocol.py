import json
import math

import pytest

from memo.executive.protocol import ABOUT_WEIGHT, ABSTAIN_ANSWER, answer, plan
from memo.memory import is_idk
from memo.sources import SourceIndex, make_fact

from .fakes import ScriptedLLM

DOC = (
    "Zorblax is headquartered in the town of Varnmouth. Meridel Okonkwo has been the chief executive of Zorblax "
    "since 2019. Zorblax was founded in 2004 by the engineer Tobias Quillfeather. Zorblax employees receive 23 days "
    "of paid leave per year. Parental leave at Zorblax lasts 31 weeks at full pay."
)
PAIRS = [
    ("Where is Zorblax headquartered?", "in the town of Varnmouth"),
    ("Who has been the chief executive of Zorblax since 2019?", "Meridel Okonkwo"),
    ("Who founded Zorblax?", "the engineer Tobias Quillfeather"),
    ("How many days of paid leave do Zorblax employees receive per year?", "23 days"),
    ("How long does parental leave at Zorblax last?", "31 weeks at full pay"),
]
INDEX = SourceIndex(
    [make_fact(f"r{i}", q, a, [("doc-1", "chunk-1")]) for i, (q, a) in enumerate(PAIRS)],
    {"doc-1": "zorblax.md"},
    {"chunk-1": DOC},
)


def _executive(subs: list[str], synthesis: str = "FINAL") -> ScriptedLLM:
    def reply(messages, t):
        if "sub-questions" in messages[0]["content"]:
            return json.dumps({"sub_questions": subs})
        return synthesis

    return ScriptedLLM(reply, "exec-A")


def _memory(answers: dict[str, str]) -> ScriptedLLM:
    return ScriptedLLM(lambda m, t: answers.get(m[-1]["content"], "I don't know"), "mem-v1")


def test_is_idk():
    assert is_idk("I don't know.") and is_idk("  ") and is_idk("Sorry, I do not know that")
    assert not is_idk("Varnmouth.")


async def test_plan_always_asks_the_question_first_deduplicates_and_caps():
    subs = ["Where is Zorblax?", "where is zorblax", "Who runs Zorblax?", "When?", "Why?"]
    exe = ScriptedLLM(lambda m, t: json.dumps({"sub_questions": subs}))
    out = await plan(exe, "Where is Zorblax?", max_sub=3)
    assert out == ["Where is Zorblax?", "Who runs Zorblax?", "When?"]


async def test_unparseable_plan_degrades_to_the_question():
    exe = ScriptedLLM(lambda m, t: "no json at all")
    assert await plan(exe, "Where is Zorblax?", max_sub=4) == ["Where is Zorblax?"]


async def test_a_supported_first_answer_is_the_answer_as_it_is_without_plan_or_synthesis():
    question = "Where is Zorblax headquartered?"
    exe = _executive(["Which town is Zorblax in?"], "FINAL: reworded")
    mem = _memory({question: " Varnmouth. "})
    result = await answer(question, executive=exe, memory=mem, sources=INDEX)
    assert result.answer == "Varnmouth." and not result.abstained
    assert exe.calls == []  # the Executive is not asked: nothing of what the Memory knew can be lost
    [step] = result.trace
    assert step.supported and not step.idk and step.sources
    assert [(s.document_id, s.title) for s in result.sources] == [("doc-1", "zorblax.md")]
    assert result.sources[0].passages[0].text == DOC
    assert result.executive == "exec-A" and result.memory == "mem-v1"


async def test_every_step_idk_abstains_without_a_synthesis_call():
    question = "What is the Zorblax dental plan deductible?"
    exe = _executive(["What dental plan does Zorblax offer?", "What is the deductible?"])
    mem = _memory({})  # "I don't know" to everything
    result = await answer(question, executive=exe, memory=mem, sources=INDEX)
    assert result.abstained and result.answer == ABSTAIN_ANSWER and result.sources == []
    assert len(exe.calls) == 1  # the plan only: no synthesis call
    assert [s.idk for s in result.trace] == [True, True, True]
    assert not any(s.supported for s in result.trace)
    assert all(len(c["messages"]) == 2 for c in mem.calls)  # no shared context between memory calls


async def test_unsupported_answers_abstain_too():
    """No test for "I don't know" decides: a confident wrong recall (a look-alike number, a stale fact, another
    fact) is abstained on, without a synthesis call."""
    question = "How many days of paid leave do Zorblax employees get each year?"
    sub = "How much paid leave do Zorblax employees get?"
    exe = _executive([sub])
    mem = _memory({question: "31 weeks of paid leave.", sub: "25 days"})
    result = await answer(question, executive=exe, memory=mem, sources=INDEX)
    assert result.abstained and result.answer == ABSTAIN_ANSWER
    assert [(s.idk, s.supported) for s in result.trace] == [(False, False), (False, False)]
    assert len(exe.calls) == 1


async def test_synthesis_uses_only_supported_notes_and_keeps_their_content():
    question = "Who is the chief executive of Zorblax, and where is the company headquartered?"
    subs = ["Who is the chief executive of Zorblax?", "Where is Zorblax headquartered?", "Who owns Zorblax?"]
    exe = _executive(subs, "Meridel Okonkwo leads Zorblax from Varnmouth.")
    mem = _memory({question: "I don't know", subs[0]: "Meridel Okonkwo", subs[1]: "Varnmouth", subs[2]: "Dr. Foo"})
    result = await answer(question, executive=exe, memory=mem, sources=INDEX)
    assert not result.abstained and result.answer == "Meridel Okonkwo leads Zorblax from Varnmouth."
    assert [s.supported for s in result.trace] == [False, True, True, False]
    notes = exe.calls[-1]["messages"][-1]["content"]
    assert "Meridel Okonkwo" in notes and "Varnmouth" in notes and "Dr. Foo" not in notes
    assert [s.document_id for s in result.sources] == ["doc-1"]


async def test_a_synthesis_that_loses_the_notes_falls_back_to_the_best_note():
    question = "Who is the chief executive of Zorblax, and where is the company headquartered?"
    subs = ["Who is the chief executive of Zorblax?"]
    mem = _memory({subs[0]: "Meridel Okonkwo"})
    for synthesis in ("The notes say the answer is not known.", "Meridel Okonkwo, since 1999."):  # lost / invented
        exe = _executive(subs, synthesis)
        result = await answer(question, executive=exe, memory=mem, sources=INDEX)
        assert result.answer == "Meridel Okonkwo" and not result.abstained
        assert result.sources and result.sources[0].document_id == "doc-1"


OWN_QUESTION = {a: q for q, a in PAIRS}


class _Scorer:
    """Rates answers by tables (the Memory's mean log-probability of each): ``rates`` as the reply to the user's
    question, ``own`` as the reply to the reflection's own question (default 0: a trained pair is known), recording
    the answers it was offered for the user's question."""

    def __init__(self, rates: dict[str, float], own: dict[str, float] | None = None) -> None:
        self.rates, self.own, self.offered = rates, own or {}, []

    async def likelihood(self, pairs):
        asked = [a for m, a in pairs if m[-1]["content"] != OWN_QUESTION.get(a)]
        if asked:
            self.offered.append(asked)
        return [
            self.own.get(a, 0.0) if m[-1]["content"] == OWN_QUESTION.get(a) else self.rates.get(a, -5.0)
            for m, a in pairs
        ]


async def test_an_unsupported_answer_is_replaced_by_the_reflection_the_memory_finds_most_likely():
    question = "How many days off a year does a Zorblax employee get?"
    # the greedy recall is a look-alike no reflection supports; of the reflections about the question, the Memory
    # rates the paid-leave fact highest
    mem = _memory({question: "31 days"})
    scorer = _Scorer({"23 days": -0.3, "31 weeks at full pay": -0.6})
    exe = _executive([])
    result = await answer(question, executive=exe, memory=mem, sources=INDEX, scorer=scorer)
    assert not result.abstained and result.answer == "23 days"
    assert exe.calls == []  # answered on the first step: no plan, no synthesis
    [step] = result.trace
    assert step.supported and step.chosen and step.chosen_from == len(scorer.offered[0])
    assert mem.calls == []  # the choice answered: the Memory generated nothing
    about = next(c.about for c in INDEX.candidates(question) if c.fact.answer == "23 days")
    # weighed by its share of the question
    assert step.rating == pytest.approx(-0.3 - 0.0 + ABOUT_WEIGHT * math.log(about), abs=1e-3)
    assert "23 days" in scorer.offered[0]
    assert "Meridel Okonkwo" not in scorer.offered[0]  # not a number, where "how many" asks for one
    assert step.sources[0].passages[0].reflections[0].answer == "23 days"


async def test_a_choice_the_memory_finds_unlikely_is_not_an_answer():
    question = "How many days off a year does a Zorblax employee get?"
    mem = _memory({question: "31 days"})
    # it finds each far less likely as the reply to this question than to the reflection's own: none is the answer
    scorer = _Scorer({"23 days": -3.0, "31 weeks at full pay": -3.5})
    result = await answer(question, executive=_executive([]), memory=mem, sources=INDEX, scorer=scorer)
    assert result.abstained and result.answer == ABSTAIN_ANSWER and result.sources == []
    step = result.trace[0]
    assert not step.supported and step.chosen_from > 0 and step.rating is not None and step.rating < -3.0


async def test_nothing_about_the_question_is_offered_and_a_supported_own_answer_stands_when_no_choice_is_likely():
    scorer = _Scorer({})
    question = "What is the annual deductible of the Zorblax dental plan?"
    result = await answer(question, executive=_executive([]), memory=_memory({}), sources=INDEX, scorer=scorer)
    assert result.abstained and scorer.offered == []  # no reflection is about dental plans
    question = "Where is Zorblax headquartered these days?"
    result = await answer(
        question, executive=_executive([]), memory=_memory({question: "Varnmouth"}), sources=INDEX, scorer=scorer
    )
    assert "in the town of Varnmouth" in scorer.offered[0]  # rated, but below the bar: the supported own answer
    assert result.answer == "Varnmouth" and result.trace[0].chosen_from == len(scorer.offered[0])
    assert not result.trace[0].chosen


async def test_the_memorys_choice_overrides_its_own_supported_look_alike():
    question = "How long does parental leave at Zorblax last?"
    # "23 days" is in a reflection about Zorblax leave, so lexically supported; the Memory rates the right fact higher
    mem = _memory({question: "23 days"})
    scorer = _Scorer({"23 days": -0.9, "31 weeks at full pay": -0.2})
    result = await answer(question, executive=_executive([]), memory=mem, sources=INDEX, scorer=scorer)
    assert result.answer == "31 weeks at full pay" and result.trace[0].chosen


async def test_a_look_alike_about_less_of_the_question_loses_though_the_memory_rates_it_higher():
    question = "How much leave at full pay do Zorblax employees get?"
    # the Memory finds the paid-leave days a little likelier, but that fact is about half as much of the question
    # (nothing of "full pay"): weighed by the share to the power ABOUT_WEIGHT, the parental-leave fact is the choice
    scorer = _Scorer({"23 days": -0.3, "31 weeks at full pay": -0.9})
    result = await answer(question, executive=_executive([]), memory=_memory({}), sources=INDEX, scorer=scorer)
    about = {c.fact.answer: c.about for c in INDEX.candidates(question)}
    assert about["23 days"] < about["31 weeks at full pay"]
    assert -0.3 + math.log(about["23 days"]) > -0.9 + math.log(about["31 weeks at full pay"])  # the plain product
    assert result.answer == "31 weeks at full pay" and not result.abstained


async def test_an_answer_that_belongs_to_another_question_loses_to_one_as_likely_for_either():
    question = "How much leave do Zorblax employees get?"
    # the Memory finds the parental-leave answer far likelier as the reply, but it is as likely again as the reply to
    # its own question; the paid-leave days, unlikely as the Memory's own words, are as unlikely to either question
    rates = {"23 days": -2.0, "31 weeks at full pay": -0.2}
    scorer = _Scorer(rates, own={"23 days": -2.0, "31 weeks at full pay": 0.0})
    result = await answer(question, executive=_executive([]), memory=_memory({}), sources=INDEX, scorer=scorer)
    about = {c.fact.answer: c.about for c in INDEX.candidates(question)}
    without = {a: rates[a] + ABOUT_WEIGHT * math.log(about[a]) for a in rates}  # the rating without the subtraction
    assert without["31 weeks at full pay"] > without["23 days"]
    assert result.answer == "23 days" and not result.abstained
    assert result.trace[0].rating == pytest.approx(ABOUT_WEIGHT * math.log(about["23 days"]), abs=1e-3)
