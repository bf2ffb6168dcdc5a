"""OpenAI-compatible chat backend (vLLM, or any provider exposing /v1/chat/completions)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from memo.errors import BackendError
from memo.llm.base import Message, guard_output
from memo.llm.slots import Slots
from memo.metrics import count_tokens

log = logging.getLogger(__name__)

# idle connections are dropped before a server's own keep-alive timeout (uvicorn's, vLLM's: 5 s) ends them, so that a
# request is not written into a connection the server is closing
KEEPALIVE_S = 3.0


class OpenAIChat:
    """``slots``: bounds the requests in flight, shared with the process's other clients of the same role (see
    :mod:`memo.llm.slots`); by default this client's own ``max_concurrency``.

    ``lora_path``: ``model`` is a LoRA adapter of a vLLM server at that path; when the server does not know it (it
    was restarted since the adapter was published), the adapter is loaded again and the request retried once.

    Structured output is asked for with ``response_format: json_schema`` (guided decoding on vLLM). A provider that
    refuses it (a 400 naming ``response_format`` or ``json_schema``) gets the request again without it, and every
    later one from this client too: the callers parse JSON tolerantly (memo.llm.base.chat_json), so a query degrades
    to unguided JSON instead of failing."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 300.0,
        lora_path: str | None = None,
        slots: Slots | None = None,
        priority: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.priority = priority
        self.lora_path = lora_path
        self._reload = asyncio.Lock()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # aiohttp, not httpx: a request costs about a fifteenth of the CPU, the gateway's largest own cost
        # (results/gateway); made on first use, inside the event loop it belongs to
        self._session: aiohttp.ClientSession | None = None
        self._slots = slots or Slots(max_concurrency)
        self.json_schema_supported = True  # until the endpoint refuses response_format once

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
        if self.priority:  # vLLM's priority scheduling (LLMRole.priority)
            body["priority"] = self.priority
        if json_schema is not None and self.json_schema_supported:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema},
            }
        resp = await self._post("/chat/completions", body)
        if "response_format" in body and _refuses_response_format(resp):
            log.warning(
                "%s (%s) refuses response_format json_schema: structured output is asked for without it from now on",
                self.base_url,
                self.model,
            )
            self.json_schema_supported = False
            del body["response_format"]
            resp = await self._post("/chat/completions", body)
        if resp.status_code == 404 and self.lora_path is not None:
            await self._load_adapter()
            resp = await self._post("/chat/completions", body)
        if resp.status_code != 200:
            raise BackendError(f"LLM server {self.base_url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            reply = resp.json()
            text = str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, ValueError) as exc:
            raise BackendError(f"LLM server {self.base_url} sent an unexpected body: {resp.text[:300]}") from exc
        count_tokens(reply.get("usage"))
        # the repetition guard (memo.llm.base): a server decodes to max_tokens, so a loop is cut here, afterwards
        return guard_output(text, json_schema)

    async def _post(self, path: str, body: dict[str, Any]) -> _Reply:
        if self._session is None:
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        async with self._slots:
            for attempt in (0, 1):
                try:
                    async with self._session.post(self.base_url + path, json=body) as resp:
                        return _Reply(resp.status, await resp.text(errors="replace"))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # a kept-alive connection the server closed meanwhile: once more, on a new connection (a
                    # completion has no side effect on the server); a refused connection or a timeout is not retried
                    dropped = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
                    if attempt == 0 and dropped and not isinstance(exc, aiohttp.ClientConnectorError):
                        log.info("LLM server %s dropped the connection (%s): retrying once", self.base_url, exc)
                        continue
                    raise BackendError(f"LLM server {self.base_url} unreachable: {type(exc).__name__} {exc}") from exc
        raise AssertionError("the loop returns or raises")

    async def _load_adapter(self) -> None:
        async with self._reload:  # concurrent requests that all met the 404 load it once
            resp = await self._post("/load_lora_adapter", {"lora_name": self.model, "lora_path": self.lora_path})
        if resp.status_code != 200 and "already been loaded" not in resp.text:
            raise BackendError(f"LLM server {self.base_url} refused adapter {self.model}: {resp.text[:300]}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class _Reply:
    """A server's answer: its status and body."""

    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def _refuses_response_format(resp: _Reply) -> bool:
    """A 400 whose error names the structured-output request (OpenAI-compatible servers without JSON-schema support
    say "response_format ... not supported" or "json_schema ... invalid")."""
    text = resp.text.lower()
    return resp.status_code == 400 and ("response_format" in text or "json_schema" in text)
