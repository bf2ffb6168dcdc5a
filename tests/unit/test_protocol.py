import json

from memo.executive.protocol import answer, plan
from memo.memory import is_idk

from .fakes import ScriptedLLM


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


async def test_answer_runs_memory_per_sub_question_and_synthesises_without_idk():
    def exe_reply(messages, t):
        if "sub-questions" in messages[0]["content"]:
            return '{"sub_questions": ["Who is the CEO of Zorblax?"]}'
        return "FINAL: " + messages[-1]["content"]

    def mem_reply(messages, t):
        return "Meridel Okonkwo." if "CEO" in messages[-1]["content"] else "I don't know"

    exe, mem = ScriptedLLM(exe_reply, "exec-A"), ScriptedLLM(mem_reply, "mem-v1")
    result = await answer("Where is Zorblax?", executive=exe, memory=mem, max_sub=4)
    assert [s.sub_question for s in result.trace] == ["Where is Zorblax?", "Who is the CEO of Zorblax?"]
    assert [s.idk for s in result.trace] == [True, False]
    assert "Meridel Okonkwo" in result.answer and "I don't know" not in result.answer
    assert result.executive == "exec-A" and result.memory == "mem-v1"
    assert all(len(c["messages"]) == 2 for c in mem.calls)  # no shared context between memory calls


async def test_a_plan_of_the_question_alone_returns_the_memory_answer_without_synthesis():
    def exe_reply(messages, t):
        if "sub-questions" in messages[0]["content"]:
            return '{"sub_questions": ["where is zorblax?"]}'  # the question itself: the plan has one step
        return "FINAL: reworded"

    exe = ScriptedLLM(exe_reply, "exec-A")
    result = await answer("Where is Zorblax?", executive=exe, memory=ScriptedLLM(lambda m, t: " Varnmouth. "))
    assert result.answer == "Varnmouth." and len(result.trace) == 1
    assert len(exe.calls) == 1  # the plan only

    idk = await answer("Where is Zorblax?", executive=exe, memory=ScriptedLLM(lambda m, t: "I don't know"))
    assert idk.answer == "FINAL: reworded"  # nothing recalled: the Executive still writes the reply
