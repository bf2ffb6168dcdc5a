import pytest

from memo.llm.base import JsonStats, chat_json, extract_json
from memo.llm.metered import MeteredLLM, Usage

from .fakes import ScriptedLLM


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! Here it is: ```json\n{"a": [1, 2]}\n``` hope it helps', {"a": [1, 2]}),
        ('noise [1, "x"] trailing {"b": 2}', [1, "x"]),
        ('{broken {"ok": true}', {"ok": True}),
    ],
)
def test_extract_json_tolerates_prose_and_fences(text, value):
    assert extract_json(text) == value


def test_extract_json_raises_without_json():
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("nothing structured here {")


def _as_list(v):
    if not isinstance(v, dict) or not isinstance(v.get("items"), list):
        raise TypeError("bad shape")
    return v["items"]


async def test_chat_json_retries_then_succeeds_with_sampling():
    replies = iter(["garbage", '{"wrong": 1}', '{"items": ["x"]}'])
    llm = ScriptedLLM(lambda m, t: next(replies))
    stats = JsonStats()
    out = await chat_json(llm, [{"role": "user", "content": "q"}], schema={}, convert=_as_list, retries=2, stats=stats)
    assert out == ["x"]
    assert stats.retries == 2 and stats.failures == 0
    assert [c["temperature"] for c in llm.calls] == [0.0, 0.7, 0.7]
    assert all(c["json_schema"] == {} for c in llm.calls)


async def test_chat_json_gives_up_without_raising():
    llm = ScriptedLLM(lambda m, t: "never json")
    stats = JsonStats()
    out = await chat_json(llm, [], schema={}, convert=_as_list, retries=1, stats=stats)
    assert out is None
    assert stats.failures == 1 and len(llm.calls) == 2


async def test_metered_llm_adds_calls_to_the_usage_in_force():
    usage = Usage()
    current: list[Usage | None] = [usage]
    llm = MeteredLLM(
        ScriptedLLM(lambda m, t: "one two three"),
        lambda s: len(s.split()),
        lambda: current[0],
        count_prompt=lambda messages: 10 * len(messages),
    )
    assert await llm.chat([{"role": "user", "content": "a b"}]) == "one two three"
    assert usage == Usage(calls=1, tokens_in=10, tokens_out=3) and llm.name == "scripted"
    current[0] = None  # e.g. no question being answered: not counted
    await llm.chat([{"role": "user", "content": "a b"}])
    assert usage == Usage(calls=1, tokens_in=10, tokens_out=3)
