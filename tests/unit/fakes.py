"""Scripted stand-ins for LLMs, for fast tests of orchestration logic (the real path has its own tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ScriptedLLM:
    """Answers with ``reply(messages, temperature)``; records every call."""

    def __init__(self, reply: Callable[[list[dict[str, str]], float], str], name: str = "scripted") -> None:
        self.reply = reply
        self._name = name
        self.calls: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return self._name

    async def chat(self, messages, *, temperature=0.0, max_tokens=256, json_schema=None):  # type: ignore[no-untyped-def]
        self.calls.append({"messages": messages, "temperature": temperature, "json_schema": json_schema})
        return self.reply(messages, temperature)


class Crash(RuntimeError):
    """A simulated kill in the middle of a job."""
