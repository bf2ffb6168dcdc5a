"""Token and call accounting for every LLM call a method makes while answering one question.

:class:`MeteredEngines` hands out the same clients as :class:`memo.llm.Engines`, wrapped so that each call adds its
prompt and completion tokens to the :class:`Meter` of the question being answered (a context variable: questions
answered concurrently in one event loop each keep their own). Tokens are counted with the tokenizer of the model that
answered (local models), else with a fallback tokenizer (the executive's, or the default model's), prompt = the chat
template applied to the messages.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memo.llm import LLM, Engines, Message
from memo.llm.metered import MeteredLLM, Usage
from memo.settings import LLMRole, Settings

log = logging.getLogger(__name__)


@dataclass
class Meter(Usage):
    """The calls and tokens of one question's answer."""

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.tokens_in,
            "completion_tokens": self.tokens_out,
            "tokens": self.tokens,
        }


CURRENT: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("memo_eval_meter", default=None)


class TokenCounter:
    """Counts the tokens of chat prompts and completions with a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, label: str) -> None:
        self.tokenizer = tokenizer
        self.label = label

    def prompt(self, messages: list[Message]) -> int:
        try:
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)
        except Exception:  # a tokenizer without a chat template: the contents alone
            return sum(self.text(m["content"]) for m in messages)

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def counter_for(settings: Settings, role: LLMRole) -> TokenCounter:
    """The tokenizer of ``role``'s model when it is a local directory, else the default model's."""
    from pathlib import Path

    candidates = [settings.model_path(role)] if role.backend == "local" else [role.model or ""]
    candidates.append(settings.memory_base_model)
    for path in candidates:
        if path and (Path(path) / "tokenizer_config.json").is_file():
            return TokenCounter(_tokenizer(path), path)
    raise FileNotFoundError(f"no local tokenizer for {role.model!r} nor at {settings.memory_base_model}")


def metered(inner: LLM, counter: TokenCounter) -> MeteredLLM:
    """``inner`` adding every call's tokens to the current question's meter (:data:`CURRENT`), counted with its own
    model's tokenizer when it is a local model, else with ``counter``."""
    # LocalChat: its own model's tokenizer, a separate instance: a fast tokenizer's padding state is not thread-safe,
    # and the model's generation thread pads with its own while this one counts on the event loop
    local = getattr(getattr(inner, "model", None), "path", None)
    count = TokenCounter(_tokenizer(local), inner.name) if local is not None else counter
    return MeteredLLM(inner, count.text, CURRENT.get, count_prompt=count.prompt)


class MeteredEngines(Engines):
    """:class:`Engines` whose clients are metered (what :func:`memo.query.ask` uses in the harness)."""

    def __init__(self, settings: Settings, counter: TokenCounter) -> None:
        super().__init__(settings)
        self.counter = counter
        self._metered: dict[int, MeteredLLM] = {}

    def _wrap(self, llm: LLM) -> LLM:
        key = id(llm)
        if key not in self._metered:
            self._metered[key] = metered(llm, self.counter)
        return self._metered[key]

    def for_role(self, role: LLMRole) -> LLM:
        return self._wrap(super().for_role(role))

    def memory(self, version_id: str | None, adapter_path: str | None) -> LLM:
        if version_id is None or adapter_path is None:
            return self._wrap(super().for_role(self.settings.memory))
        return self._wrap(super().memory(version_id, adapter_path))

    async def aclose(self) -> None:
        self._metered.clear()
        await super().aclose()
