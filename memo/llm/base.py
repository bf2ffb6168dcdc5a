"""The LLM seam: chat messages in, text out. Every role (generator, memory, executive) uses it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
T = TypeVar("T")


class LLM(Protocol):
    """An async chat model. ``json_schema`` asks for JSON output (guided decoding where supported)."""

    @property
    def name(self) -> str: ...

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_schema: dict[str, Any] | None = None,
    ) -> str: ...


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Parse the first JSON value in ``text``, tolerating code fences and surrounding prose.

    Raises ValueError when there is none.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        for i, ch in enumerate(cand):
            if ch in "[{":
                try:
                    value, _ = decoder.raw_decode(cand[i:])
                    return value
                except json.JSONDecodeError:
                    continue
    raise ValueError(f"no JSON value in model output: {text[:200]!r}")


class JsonStats:
    """Counts of structured-output attempts, for logs and job statistics."""

    def __init__(self) -> None:
        self.calls = 0
        self.retries = 0
        self.failures = 0


async def chat_json(
    llm: LLM,
    messages: list[Message],
    *,
    schema: dict[str, Any],
    convert: Callable[[Any], T],
    retries: int = 2,
    temperature: float = 0.0,
    retry_temperature: float = 0.7,
    max_tokens: int = 256,
    stats: JsonStats | None = None,
) -> T | None:
    """Ask for JSON matching ``schema``; parse tolerantly, validate with ``convert`` (raises on bad shape).

    Retries a bounded number of times (sampling on retries); returns None when every attempt fails, so an
    unparseable answer is counted and logged, never raised.
    """
    stats = stats or JsonStats()
    stats.calls += 1
    for attempt in range(retries + 1):
        text = await llm.chat(
            messages,
            temperature=temperature if attempt == 0 else retry_temperature,
            max_tokens=max_tokens,
            json_schema=schema,
        )
        try:
            return convert(extract_json(text))
        except (ValueError, TypeError, KeyError) as exc:
            if attempt < retries:
                stats.retries += 1
            log.debug("unusable structured output (attempt %d): %s", attempt + 1, exc)
    stats.failures += 1
    log.warning("gave up on structured output from %s after %d attempts", llm.name, retries + 1)
    return None
