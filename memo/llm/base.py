"""The LLM seam: chat messages in, text out. Every role (generator, memory, executive) uses it.

Every backend passes its plain-text output through :func:`trim_repetition` (the repetition guard): a small model at
greedy decoding can fall into a loop ("The notes say ... but the answer is not ... The notes say ...") and repeat it
until the token limit; the loop is cut after its first round. The local backend also stops generating a row once
its tail loops (:mod:`memo.llm.local`). Structured (JSON) output is left as it is: a list of pairs repeats words
legitimately, and a looping one fails to parse and is retried anyway."""

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


class Scorer(Protocol):
    """A model that rates given answers (the Memory role): for each (messages, answer) pair, the mean
    log-probability per token of the answer as its reply to the messages."""

    async def likelihood(self, pairs: list[tuple[list[Message], str]]) -> list[float]: ...


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


# -- the repetition guard ---------------------------------------------------------------------------------------
# A loop is text said again word for word. No sampling penalty is used instead: a right answer may repeat a number
# or a name ("$217 per night; the $217 includes taxes"), and a penalty would change it.
LOOP_WORDS = 6  # the same six words in a row twice: normal prose (and a fact that repeats a number) never does that
TEMPLATE_WORDS, TEMPLATE_TIMES = 4, 3  # a four-word phrase three times: a clause template looping with new fillers
_RUN = re.compile(r"(.{1,12}?)\1{15,}", re.S)  # a short unit repeated 16+ times without spaces ("!!!!", "1111", "-=-=")
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;:\n](?=\s|$)")
_TRAILING = " \t\n,;:-\u2013\u2014(["


def loop_start(text: str) -> int | None:
    """Character offset where degenerate repetition starts in ``text`` (None: there is none). A prefix of whole
    words that loops loops at the same offset in any text it begins (the local backend stops on such a prefix)."""
    words = [(m.start(), m.group().lower().strip(".,;:!?\"'()[]")) for m in _WORD.finditer(text)]
    keys = [w or "\0" for _, w in words]
    cut: int | None = None
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(keys) - LOOP_WORDS + 1):
        gram = tuple(keys[i : i + LOOP_WORDS])
        if gram in seen:
            cut = _sentence_cut(text, words[seen[gram]][0], words[i][0])
            break
        seen[gram] = i
    counts: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(keys) - TEMPLATE_WORDS + 1):
        at = counts.setdefault(tuple(keys[i : i + TEMPLATE_WORDS]), [])
        if at and i < at[-1] + TEMPLATE_WORDS:  # overlapping itself ("a a a a a"): the exact test sees that
            continue
        at.append(i)
        if len(at) == TEMPLATE_TIMES:
            c = _sentence_cut(text, words[at[0]][0], words[at[1]][0])
            cut = c if cut is None else min(cut, c)
            break
    run = _RUN.search(text)
    if run is not None:
        c = run.start() + len(run.group(1))  # keep one unit
        cut = c if cut is None else min(cut, c)
    return cut


def _sentence_cut(text: str, first: int, repeat: int) -> int:
    """Where to cut a loop whose first round starts at ``first`` and whose repeat starts at ``repeat``: after the
    last sentence that ends between them (a whole first round), else at the repeat."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text, first, repeat)]
    return ends[-1] if ends else repeat


def trim_repetition(text: str) -> str:
    """``text`` without its degenerate repetition: cut after the loop's first round (unchanged when there is none)."""
    cut = loop_start(text)
    if cut is None:
        return text
    return text[:cut].rstrip(_TRAILING) or text[:cut].strip()


def guard_output(text: str, json_schema: dict[str, Any] | None) -> str:
    """What a backend returns for ``text``: plain text trimmed of loops, structured output as it is."""
    return text if json_schema is not None else trim_repetition(text)


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
