"""The query protocol: the Executive plans sub-questions, the Memory model answers each (in parallel, no
shared context), the Executive synthesises the final answer from the non-IDK answers. A plan that is the question
alone needs no synthesis: the Memory's answer to it is the answer (a rewording by the Executive could only lose
what the Memory recalled)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from memo.executive.prompts import PLAN_SCHEMA, plan_messages, synth_messages
from memo.llm.base import LLM, chat_json
from memo.memory import is_idk, memory_messages
from memo.questions import normalise_question


@dataclass
class Step:
    sub_question: str
    memory_answer: str
    idk: bool


@dataclass
class Answer:
    question: str
    answer: str
    executive: str
    memory: str
    trace: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sub_questions(value: Any) -> list[str]:
    subs = value["sub_questions"] if isinstance(value, dict) else value
    if not isinstance(subs, list):
        raise TypeError("sub_questions is not a list")
    return [s.strip() for s in subs if isinstance(s, str) and s.strip()]


async def plan(executive: LLM, question: str, max_sub: int) -> list[str]:
    """Sub-questions for ``question``; the question itself is always asked first (a plan that cannot be
    parsed degrades to just the question)."""
    subs = await chat_json(
        executive,
        plan_messages(question, max_sub),
        schema=PLAN_SCHEMA,
        convert=_sub_questions,
        retries=1,
        max_tokens=128,
    )
    out: list[str] = []
    seen: set[str] = set()
    for q in [question, *(subs or [])]:
        key = normalise_question(q)
        if key and key not in seen:
            seen.add(key)
            out.append(q)
    return out[:max_sub]


async def answer(question: str, *, executive: LLM, memory: LLM, max_sub: int = 4) -> Answer:
    subs = await plan(executive, question, max_sub)
    replies = await asyncio.gather(*(memory.chat(memory_messages(q), temperature=0.0, max_tokens=96) for q in subs))
    trace = [Step(q, a, is_idk(a)) for q, a in zip(subs, replies, strict=True)]
    notes = [(s.sub_question, s.memory_answer) for s in trace if not s.idk]
    if len(trace) == 1 and notes:
        final = notes[0][1]
    else:
        final = await executive.chat(synth_messages(question, notes), temperature=0.0, max_tokens=128)
    return Answer(question, final.strip(), executive.name, memory.name, trace)
