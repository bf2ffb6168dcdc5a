"""Requests in flight are bounded per process: threads with their own event loops share one :class:`Slots`."""

from __future__ import annotations

import asyncio
import threading

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


def test_one_role_on_one_server_shares_its_slots():
    assert shared_slots(("role", "x"), 4) is shared_slots(("role", "x"), 4)
    assert shared_slots(("role", "x"), 4) is not shared_slots(("role", "y"), 4)
