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


class _Waiter:
    """One acquire waiting for a slot: woken on its own loop; ``granted`` (under the lock) once a slot is its."""

    __slots__ = ("loop", "fut", "granted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.fut, self.granted = loop, loop.create_future(), False


class Slots:
    """A counting semaphore shared across threads and event loops; waiters are served first come, first served.

    A slot handed to a waiter is recorded under the lock before its loop is woken, and a cancelled waiter leaves the
    queue (or passes on the slot it was handed) under the same lock: a grant never depends on a loop running its
    callback, so a loop that is closing loses no slot."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._free = n
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            w = _Waiter(asyncio.get_running_loop())
            self._waiters.append(w)
        try:
            await w.fut
        except asyncio.CancelledError:
            with self._lock:
                handed = w.granted
                if not handed:
                    self._waiters.remove(w)
            if handed:  # granted, then cancelled before it could run: pass the slot on
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                w = self._waiters.popleft()
                try:
                    w.loop.call_soon_threadsafe(_wake, w.fut)
                except RuntimeError:  # that waiter's loop is closed: its task is gone
                    continue
                w.granted = True
                return
            self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # else cancelled meanwhile: its waiter passes the slot on
        fut.set_result(None)


_registry: dict[Hashable, Slots] = {}
_registry_lock = threading.Lock()


def shared_slots(key: Hashable, n: int) -> Slots:
    """The process's slots for ``key`` (one LLM role on one server) with ``n`` requests in flight."""
    with _registry_lock:
        return _registry.setdefault((key, n), Slots(n))
