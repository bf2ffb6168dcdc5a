"""An LLM that counts its calls and their tokens: the reflect stage's job figures, the benchmarks' cost per question."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memo.llm.base import LLM, Message


@dataclass
class Usage:
    """Calls and tokens in (prompts) and out (completions) counted by a :class:`MeteredLLM`."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


class MeteredLLM:
    """Passes every call on to ``inner`` and adds it to ``usage``: one call, the prompt's tokens and the completion's
    tokens, counted by ``count``. ``usage`` is a :class:`Usage`, or a function that returns the one to add a call to
    when it returns (None: the call is not counted). ``count_prompt`` counts a prompt (by default the sum of its
    messages' contents). A call that raises is not counted."""

    def __init__(
        self,
        inner: LLM,
        count: Callable[[str], int],
        usage: Usage | Callable[[], Usage | None],
        *,
        count_prompt: Callable[[list[Message]], int] | None = None,
    ) -> None:
        self.inner, self.count, self.usage = inner, count, usage
        self.count_prompt = count_prompt or (lambda messages: sum(count(m["content"]) for m in messages))

    @property
    def name(self) -> str:
        return self.inner.name

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_schema: dict[str, Any] | None = None,
    ) -> str:
        out = await self.inner.chat(messages, temperature=temperature, max_tokens=max_tokens, json_schema=json_schema)
        usage = self.usage if isinstance(self.usage, Usage) else self.usage()
        if usage is not None:
            usage.calls += 1
            usage.tokens_in += self.count_prompt(messages)
            usage.tokens_out += self.count(out)
        return out
