"""Requests in flight to an LLM server, bounded per process rather than per event loop.

A batch ingests several documents at once, each on a thread with its own event loop and its own clients; an
``asyncio.Semaphore`` per client would let every thread send ``max_concurrency`` requests, so the server would see
``workers x max_concurrency`` of them (a MuSiQue eval reached 363 and its requests timed out in vLLM's queue).
:class:`Slots` is shared by the threads and awaited from any loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Hashable


class Slots:
    """A counting semaphore shared across threads and event loops; waiters are served first come, first served."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._free = n
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled before it could run: pass the slot on
                self.release()
            raise  # a waiter cancelled before its grant is skipped by _grant

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._grant, fut)
                    return
                except RuntimeError:  # that waiter's loop is closed
                    continue
            self._free += 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # its waiter was cancelled meanwhile
            self.release()
        else:
            fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


_registry: dict[Hashable, Slots] = {}
_registry_lock = threading.Lock()


def shared_slots(key: Hashable, n: int) -> Slots:
    """The process's slots for ``key`` (one LLM role on one server) with ``n`` requests in flight."""
    with _registry_lock:
        return _registry.setdefault((key, n), Slots(n))
