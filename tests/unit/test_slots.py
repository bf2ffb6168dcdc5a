"""Requests in flight are bounded per process: threads with their own event loops share one :class:`Slots`."""

from __future__ import annotations

import asyncio
import threading

import pytest

from memo.llm.slots import Slots, shared_slots


def test_threads_with_their_own_loops_share_the_bound():
    slots = Slots(3)
    lock = threading.Lock()
    inside = 0
    peak = 0
    done = 0

    async def request() -> None:
        nonlocal inside, peak, done
        async with slots:
            with lock:
                inside += 1
                peak = max(peak, inside)
            await asyncio.sleep(0.002)
            with lock:
                inside -= 1
                done += 1

    async def document() -> None:
        await asyncio.gather(*(request() for _ in range(20)))

    threads = [threading.Thread(target=asyncio.run, args=(document(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert done == 80
    assert peak == 3  # 4 loops x 20 requests, never more than 3 at once (an asyncio.Semaphore per loop allowed 12)


def test_a_cancelled_waiter_does_not_keep_a_slot():
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # granted to the waiter on the next loop turn...
        waiter.cancel()  # ...which is cancelled before it runs: the slot must come back
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.wait_for(slots.acquire(), timeout=1)
        slots.release()

    asyncio.run(main())


def test_a_waiter_on_a_closed_loop_is_skipped():
    slots = Slots(1)

    async def hold_then_wait() -> None:
        await slots.acquire()

    asyncio.run(hold_then_wait())  # holds the only slot

    async def wait_forever() -> None:
        task = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not task.done()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(wait_forever())  # leaves a waiter queued on this loop
    loop.close()
    slots.release()  # the closed loop's waiter is passed over; the slot is free again

    async def acquire() -> None:
        await asyncio.wait_for(slots.acquire(), timeout=1)

    asyncio.run(acquire())


def test_a_cancelled_waiter_on_an_idle_loop_is_forgotten_at_once():
    """A stage that fails cancels its loop's waiting requests; that loop stays open (idle) a moment before it is
    closed. A slot given back meanwhile must not be handed to one of those waiters, whose loop never runs the grant:
    each failed attempt of a stage lost a slot so, until a retried stage waited for ever (CI, the vLLM restart)."""
    slots = Slots(1)
    asyncio.run(slots.acquire())  # holds the only slot

    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_task(slots.acquire())
        loop.run_until_complete(asyncio.sleep(0))  # queued
        waiter.cancel()
        loop.run_until_complete(asyncio.gather(waiter, return_exceptions=True))  # cancelled; the loop idles, open
        slots.release()

        async def acquire() -> None:
            await asyncio.wait_for(slots.acquire(), timeout=1)

        asyncio.run(acquire())  # the slot came back
    finally:
        loop.close()


def test_a_stage_that_fails_again_and_again_gives_back_every_slot():
    """A reflect stage as it fails: one request raises, asyncio.run cancels the others (holding and waiting) and
    closes the loop. The slots the holders gave back went to cancelled waiters, each grant a callback on the closing
    loop, and were lost (both of 2 after one attempt, with 198 waiting); the retried stage then waited for ever."""
    slots = Slots(2)

    async def request(i: int) -> None:
        async with slots:
            await asyncio.sleep(0.001)
            if i == 3:
                raise ConnectionError("the server went away")

    async def stage() -> None:  # a lost slot makes the next attempt wait: bounded, so that the test fails instead
        await asyncio.wait_for(asyncio.gather(*(request(i) for i in range(200))), timeout=10)

    for _ in range(5):
        with pytest.raises(ConnectionError):
            asyncio.run(stage())

    async def both() -> None:
        await asyncio.wait_for(asyncio.gather(slots.acquire(), slots.acquire()), timeout=1)

    asyncio.run(both())


def test_one_role_on_one_server_shares_its_slots():
    assert shared_slots(("role", "x"), 4) is shared_slots(("role", "x"), 4)
    assert shared_slots(("role", "x"), 4) is not shared_slots(("role", "y"), 4)
