"""run_each: the documents of a batch are processed several at a time, and a failure loses no running work."""

from __future__ import annotations

import threading

import pytest

from memo.batch import run_each


def test_every_job_runs_once_and_is_counted():
    seen: list[str] = []
    lock = threading.Lock()
    done: list[int] = []

    def fn(job_id: str) -> None:
        with lock:
            seen.append(job_id)

    ids = [f"j{i}" for i in range(7)]
    run_each(ids, fn, 3, lambda: done.append(1))
    assert sorted(seen) == sorted(ids) and len(done) == 7


def test_workers_run_at_the_same_time():
    # three jobs that can only all pass the barrier together: run one at a time, they would break it
    barrier = threading.Barrier(3, timeout=30)
    run_each(["a", "b", "c"], lambda _: barrier.wait(), 3)


def test_one_at_a_time_stops_at_the_first_failure():
    ran: list[str] = []

    def fn(job_id: str) -> None:
        ran.append(job_id)
        if job_id == "b":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_each(["a", "b", "c"], fn, 1)
    assert ran == ["a", "b"]


def test_a_failure_is_raised_after_the_running_jobs_finish():
    both_started = threading.Barrier(2, timeout=30)
    failed = threading.Event()
    finished: list[str] = []

    def fn(job_id: str) -> None:
        if job_id == "bad":
            both_started.wait()
            failed.set()
            raise ValueError("bad document")
        if job_id == "slow":
            both_started.wait()
            assert failed.wait(30)
            finished.append(job_id)

    with pytest.raises(ValueError, match="bad document"):
        run_each(["bad", "slow", "later1", "later2"], fn, 2)
    assert "slow" in finished  # its work was not abandoned
