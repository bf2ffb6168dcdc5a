"""The LLM seam and the engines that build role clients from settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from memo.llm.base import LLM, Message, Scorer, chat_json, extract_json
from memo.llm.prepare import is_prepared
from memo.llm.slots import shared_slots
from memo.settings import LLMRole, Settings

log = logging.getLogger(__name__)

__all__ = ["LLM", "Engines", "Message", "Scorer", "chat_json", "extract_json", "is_full_model", "served_adapter_name"]


def is_full_model(path: str) -> bool:
    """A version directory holding a whole model (full fine-tuning) rather than a peft adapter."""
    return not (Path(path) / "adapter_config.json").is_file()


def served_adapter_name(version_id: str) -> str:
    """The name a memory version's adapter is served under (versioned, so old and new can coexist)."""
    return f"memo-{version_id}"


class Engines:
    """Builds and caches the LLM clients of one process (one event loop) from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[Any, ...], LLM] = {}
        self._unscored: set[str] = set()  # weights found missing for a scorer, warned about once

    def for_role(self, role: LLMRole) -> LLM:
        key = ("role", role.backend, role.model, role.base_url, role.api_key)
        if key not in self._cache:
            if role.backend == "openai":
                from memo.llm.openai_compat import OpenAIChat

                assert role.base_url and role.model  # validated by LLMRole
                self._cache[key] = OpenAIChat(
                    role.base_url,
                    role.model,
                    api_key=role.api_key,
                    timeout_s=role.timeout_s,
                    slots=shared_slots(key, role.max_concurrency),
                    priority=role.priority,
                )
            else:
                from memo.llm.local import LocalChat, load_local_model

                self._cache[key] = LocalChat(
                    load_local_model(self.settings.model_path(role), self.settings.train.device)
                )
        return self._cache[key]

    def generator(self) -> LLM:
        return self.for_role(self.settings.generator)

    def memory(self, version_id: str | None, adapter_path: str | None) -> LLM:
        """The Memory model of one version (None = the untrained base model)."""
        role = self.settings.memory
        if version_id is None or adapter_path is None:
            return self.for_role(role)
        key = ("memory", role.backend, role.base_url, version_id)
        if key not in self._cache:
            if role.backend == "openai":
                from memo.llm.openai_compat import OpenAIChat

                assert role.base_url
                self._cache[key] = OpenAIChat(
                    role.base_url,
                    served_adapter_name(version_id),
                    api_key=role.api_key,
                    timeout_s=role.timeout_s,
                    lora_path=adapter_path,
                    slots=shared_slots(("memory", role.base_url), role.max_concurrency),  # every version
                    priority=role.priority,
                )
            elif is_full_model(adapter_path):  # a fully fine-tuned version is a model of its own
                from memo.llm.local import LocalChat, load_local_model

                self._cache[key] = LocalChat(load_local_model(adapter_path, self.settings.train.device))
            else:
                from memo.llm.local import LocalChat, load_local_model

                model = load_local_model(self.settings.model_path(role), self.settings.train.device)
                self._cache[key] = LocalChat(model, adapter=(version_id, adapter_path))
        return self._cache[key]

    def scorer(self, version_id: str, adapter_path: str | None) -> Scorer | None:
        """The Memory model of one version as a :class:`Scorer`, in this process: vLLM cannot rate given text through
        a LoRA adapter (``prompt_logprobs`` with LoRA enabled kills its engine on the CPU build, vllm-project/vllm
        #16668), so on the ``openai`` backend the adapter is also loaded here, on ``train.device``, on the weights
        it was trained from (``memory_base_model``). Without them here: None, the Memory's own answers only (logged)."""
        if adapter_path is None:
            return None
        role = self.settings.memory
        if role.backend == "local":  # the Memory's own client (Engines.memory's, not a subclass's wrapper of it)
            return cast(Scorer, Engines.memory(self, version_id, adapter_path))
        key = ("scorer", version_id)
        if key not in self._cache:
            from memo.llm.local import LocalChat, load_local_model

            full = is_full_model(adapter_path)
            weights = adapter_path if full else self.settings.memory_base_model
            if not is_prepared(Path(weights)):
                if weights not in self._unscored:
                    self._unscored.add(weights)
                    log.warning("no Memory weights at %s in this process: answers without the Memory's choice", weights)
                return None
            model = load_local_model(weights, self.settings.train.device)
            self._cache[key] = LocalChat(model) if full else LocalChat(model, adapter=(version_id, adapter_path))
        return cast(Scorer, self._cache[key])

    async def aclose(self) -> None:
        for llm in self._cache.values():
            close = getattr(llm, "aclose", None)
            if close is not None:
                await close()
        self._cache.clear()
