"""Job liveness: the heartbeats of the jobs a process holds, and the check that finds jobs left queued or running by a
process that died and requeues them (or fails them, saying why).

A job is *held* by the process running one of its stages (:func:`memo.pipeline.run_stage`) and, in-process, by the
runner that has it queued (the gateway's dispatcher, a CLI batch); the holder writes ``heartbeat_at`` every
``MEMO_JOBS__HEARTBEAT_S``. A job between two stages of a Celery chain waits in the broker (``heartbeat_at`` None:
the broker keeps it, a worker that dies mid-task leaves its message for another). So a queued or running job whose
heartbeat is older than ``MEMO_JOBS__STALE_AFTER_S`` has lost its process.

A job waiting in the broker has no heartbeat to go stale, so a broker that loses its messages (a Redis restarted
without persistence) would leave it waiting for ever: with a Redis broker the check also looks for every such job's
message (and that of a queued job no process holds, whose sending failed) in the broker's queues and its unacked set,
and requeues a job whose message is in neither on two checks in a row (:func:`recover_lost_jobs`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from memo.db import Database, Job, JobState
from memo.db.models import utcnow
from memo.settings import Settings

log = logging.getLogger(__name__)

LIVE_STATES = (JobState.queued, JobState.running)


def runner_id() -> str:
    """This process, as a job's ``runner``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_in_background(settings: Settings) -> None:
    """The calling thread, and the threads it starts (torch's OpenMP team among them), at ``jobs.nice`` (Linux
    schedules threads by their own niceness; the calling thread runs jobs and nothing else)."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, max(os.getpriority(os.PRIO_PROCESS, me), settings.jobs.nice))
    except (OSError, AttributeError):  # not Linux or not allowed: jobs run at the process's priority
        log.warning("job thread niceness not set", exc_info=True)


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


# kombu's Redis transport keeps a delivered, not yet acknowledged message in this hash (its default ``unacked_key``)
REDIS_UNACKED_KEY = "unacked"
# a job found waiting with no message this many checks in a row is lost (one is not enough: a worker that just took the
# message, or a stage that just ended, has it in hand for a moment)
LOST_AFTER_CHECKS = 2

# a job waiting in the broker as one check saw it: (state, stage, requeues, heartbeat)
Waiting = tuple[JobState, str | None, int, datetime | None]


def _message_text(raw: bytes | str) -> str:
    """A kombu message as text to look for job ids in: the envelope and its body (base64-decoded when encoded)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        envelope = json.loads(text)
        if isinstance(envelope, list):  # an unacked entry: [message, exchange, routing key]
            envelope = envelope[0]
        body = envelope.get("body", "")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8", "replace")
        return f"{text}\n{body}"
    except (ValueError, TypeError, AttributeError):
        return text


def jobs_in_redis_broker(broker_url: str, job_ids: set[str], timeout_s: float = 5.0) -> set[str] | None:
    """Which of ``job_ids`` have a message in the Redis broker: in a queue (every list key of its database, so every
    queue and priority level) or delivered to a worker and not yet acknowledged. None when the broker cannot be
    read (it is down: nothing can be said, nothing is requeued)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    found: set[str] = set()

    def look(raw: bytes | str) -> None:
        text = _message_text(raw)
        found.update(j for j in job_ids - found if j in text)

    try:
        for key in client.scan_iter(count=500, _type="list"):
            for raw in client.lrange(key, 0, -1):
                look(raw)
        for raw in client.hvals(REDIS_UNACKED_KEY):
            look(raw)
    except (redis.RedisError, OSError) as exc:
        log.warning("broker %s not readable (%s): jobs waiting in it are not checked", broker_url, exc)
        return None
    finally:
        client.close()
    return found


def recover_lost_jobs(
    db: Database, settings: Settings, submit: Callable[[str], object], missing: dict[str, tuple[Waiting, int]]
) -> dict[str, str]:
    """Every queued or running job that waits in a Redis broker (no heartbeat; or queued and held by no process:
    its sending failed, the broker being down) but whose message the broker holds nowhere on
    :data:`LOST_AFTER_CHECKS` checks in a row with its row unchanged (``missing``: each such job as the checks
    before saw it and their count, updated here): requeued through ``submit`` (taken by a compare-and-set, so two
    processes requeue it once). A lost message is no fault of the job, so ``jobs.max_requeues`` does not fail it;
    ``requeues`` still counts it. Other brokers are not read (AMQP keeps its messages on disk). Returns job id ->
    ``requeued``."""
    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return {}
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.state, Job.stage, Job.requeues, Job.heartbeat_at).where(
                Job.state.in_(LIVE_STATES),
                or_(Job.heartbeat_at.is_(None), and_(Job.state == JobState.queued, Job.runner.is_(None))),
            )
        ).all()
    if not rows:
        missing.clear()
        return {}
    held = jobs_in_redis_broker(url, {r.id for r in rows})
    if held is None:
        return {}
    # a job counts one more miss while its row is as the last check saw it; found, or changed, it starts again
    now: dict[str, tuple[Waiting, int]] = {}
    for r in rows:
        if r.id not in held:
            seen: Waiting = (r.state, r.stage, r.requeues, r.heartbeat_at)
            before = missing.get(r.id)
            now[r.id] = (seen, before[1] + 1 if before is not None and before[0] == seen else 1)
    lost = [job_id for job_id, (_, misses) in now.items() if misses >= LOST_AFTER_CHECKS]
    missing.clear()
    missing.update({job_id: entry for job_id, entry in now.items() if job_id not in lost})
    outcomes: dict[str, str] = {}
    for job_id in lost:
        state, stage, requeues, heartbeat = now[job_id][0]
        with db.session() as s:
            taken = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == state,
                    Job.stage == stage if stage is not None else Job.stage.is_(None),
                    Job.requeues == requeues,
                    Job.heartbeat_at.is_(None) if heartbeat is None else Job.heartbeat_at == heartbeat,
                )
                .values(state=JobState.queued, requeues=requeues + 1, heartbeat_at=utcnow(), runner=None)
            ).rowcount  # type: ignore[attr-defined]
        if not taken:  # another process requeued it, or the job moved on
            continue
        where = f"after stage {stage}" if state == JobState.running else "queued"
        log.warning(
            "job %s waited in the broker %s but its message is gone (a broker restart?): requeued", job_id, where
        )
        outcomes[job_id] = "requeued"
        submit(job_id)
    return outcomes


class StaleJobCheck:
    """:func:`recover_stale_jobs` and :func:`recover_lost_jobs` now (:meth:`run_once`, at start-up) and every
    ``jobs.check_every_s`` in a daemon thread (:meth:`start`); the gateway and every worker run one. A check that
    fails (the database or the broker is away) is logged and tried again at the next one."""

    def __init__(self, db: Database, settings: Settings, submit: Callable[[str], object]) -> None:
        self.db, self.settings, self.submit = db, settings, submit
        # the jobs the checks before found waiting with no message in the broker, and how many times
        self._missing: dict[str, tuple[Waiting, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memo-stale-jobs", daemon=True)

    def run_once(self) -> None:
        try:
            recover_stale_jobs(self.db, self.settings, self.submit)
        except Exception:
            log.warning("stale job check failed", exc_info=True)
        try:
            recover_lost_jobs(self.db, self.settings, self.submit, self._missing)
        except Exception:
            log.warning("lost job check failed", exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.jobs.check_every_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
