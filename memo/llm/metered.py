"""LLMs that count their calls: in tokens (the reflect stage's job figures, the benchmarks' cost per question) and in
the process's Prometheus metrics (per role: calls, errors, latency)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memo.llm.base import LLM, Message
from memo.metrics import LLM_CALL_SECONDS, LLM_CALLS, LLM_ROLE


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


class ObservedLLM:
    """Passes every call on to ``inner`` and records it in the process's Prometheus metrics under ``role``
    (:mod:`memo.metrics`): its outcome and its wall time, and the tokens an OpenAI-compatible server reports."""

    def __init__(self, inner: LLM, role: str) -> None:
        self.inner, self.role = inner, role

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
        start = time.perf_counter()
        outcome = "error"
        role = LLM_ROLE.set(self.role)  # the backend labels the tokens it is told of with it
        try:
            out = await self.inner.chat(
                messages, temperature=temperature, max_tokens=max_tokens, json_schema=json_schema
            )
            outcome = "ok"
            return out
        finally:
            LLM_ROLE.reset(role)
            LLM_CALL_SECONDS.labels(self.role).observe(time.perf_counter() - start)
            LLM_CALLS.labels(self.role, outcome).inc()
