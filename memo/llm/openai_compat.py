"""OpenAI-compatible chat backend (vLLM, or any provider exposing /v1/chat/completions)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from memo.errors import BackendError
from memo.llm.base import Message


class OpenAIChat:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._sem = asyncio.Semaphore(max_concurrency)

    @property
    def name(self) -> str:
        return self.model

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_schema: dict[str, Any] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema},
            }
        async with self._sem:
            try:
                resp = await self._client.post("/chat/completions", json=body)
            except httpx.HTTPError as exc:
                raise BackendError(f"LLM server {self.base_url} unreachable: {type(exc).__name__} {exc}") from exc
        if resp.status_code != 200:
            raise BackendError(f"LLM server {self.base_url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, ValueError) as exc:
            raise BackendError(f"LLM server {self.base_url} sent an unexpected body: {resp.text[:300]}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
