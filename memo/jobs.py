"""Job liveness: the heartbeats of the jobs a process holds, and the check that finds jobs left queued or running by a
process that died and requeues them (or fails them, saying why).

A job is *held* by the process running one of its stages (:func:`memo.pipeline.run_stage`) and, in-process, by the
runner that has it queued (the gateway's dispatcher, a CLI batch); the holder writes ``heartbeat_at`` every
``MEMO_JOBS__HEARTBEAT_S``. A job between two stages of a Celery chain waits in the broker (``heartbeat_at`` None:
the broker keeps it, a worker that dies mid-task leaves its message for another). So a queued or running job whose
heartbeat is older than ``MEMO_JOBS__STALE_AFTER_S`` has lost its process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update

from memo.db import Database, Job, JobState
from memo.db.models import utcnow
from memo.settings import Settings

log = logging.getLogger(__name__)

LIVE_STATES = (JobState.queued, JobState.running)


def runner_id() -> str:
    """This process, as a job's ``runner``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Writes ``heartbeat_at`` and ``runner`` of the jobs this process holds every ``interval_s``, from a daemon
    thread (started with the first job held, stopped by :meth:`close`)."""

    def __init__(self, db: Database, interval_s: float) -> None:
        self.db, self.interval_s = db, interval_s
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._held[job_id] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="memo-heartbeat", daemon=True)
                self._thread.start()
        self.beat([job_id])

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held[job_id] -= 1
            if self._held[job_id] <= 0:
                del self._held[job_id]

    def beat(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.state.in_(LIVE_STATES))
                .values(heartbeat_at=utcnow(), runner=runner_id())
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                held = list(self._held)
            try:
                self.beat(held)
            except Exception:  # the database is away for a moment: the next beat tries again
                log.warning("heartbeat of jobs %s not written", held, exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def recover_stale_jobs(db: Database, settings: Settings, submit: Callable[[str], object]) -> dict[str, str]:
    """Every queued or running job whose heartbeat is older than ``jobs.stale_after_s``: requeued through
    ``submit``, or failed when it has been requeued ``jobs.max_requeues`` times already (a job that kills its
    process would kill every next one), or cancelled when a cancel was asked for. Each job is taken by a
    compare-and-set on its heartbeat, so two processes checking at once act on it once. Returns job id -> outcome
    (``requeued``, ``failed``, ``cancelled``)."""
    cfg = settings.jobs
    cutoff = utcnow() - timedelta(seconds=cfg.stale_after_s)
    with db.session() as s:
        stale = s.scalars(
            select(Job).where(Job.state.in_(LIVE_STATES), Job.heartbeat_at.is_not(None), Job.heartbeat_at < cutoff)
        ).all()
    outcomes: dict[str, str] = {}
    for job in stale:
        where = (f"in stage {job.stage}" if job.state == JobState.running else "queued") + (
            f" on {job.runner}" if job.runner else ""
        )
        values: dict[str, object]
        if job.cancel_requested:
            outcome, values = "cancelled", {"state": JobState.cancelled, "heartbeat_at": None}
        elif job.requeues >= cfg.max_requeues:
            error = (
                f"abandoned: its process stopped {where} (no heartbeat for {cfg.stale_after_s:g} s), "
                f"and it was requeued {job.requeues} times already; POST /v1/jobs/{job.id}/retry runs it again"
            )
            outcome, values = "failed", {"state": JobState.failed, "error": error, "heartbeat_at": None}
        else:
            outcome = "requeued"
            values = {"state": JobState.queued, "requeues": job.requeues + 1, "heartbeat_at": utcnow(), "runner": None}
        with db.session() as s:
            taken = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == job.state, Job.heartbeat_at == job.heartbeat_at)
                .values(**values)
            ).rowcount  # type: ignore[attr-defined]
        if not taken:  # another process took it, or the job moved on
            continue
        log.warning("job %s was left %s: %s", job.id, where, outcome)
        outcomes[job.id] = outcome
        if outcome == "requeued":
            submit(job.id)
    return outcomes


class StaleJobCheck:
    """:func:`recover_stale_jobs` now (:meth:`run_once`, at start-up) and every ``jobs.check_every_s`` in a daemon
    thread (:meth:`start`); the gateway and every worker run one. A check that fails (the database is away) is
    logged and tried again at the next one."""

    def __init__(self, db: Database, settings: Settings, submit: Callable[[str], object]) -> None:
        self.db, self.settings, self.submit = db, settings, submit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memo-stale-jobs", daemon=True)

    def run_once(self) -> None:
        try:
            recover_stale_jobs(self.db, self.settings, self.submit)
        except Exception:
            log.warning("stale job check failed", exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.jobs.check_every_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
