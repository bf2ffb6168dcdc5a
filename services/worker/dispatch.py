"""Starting a job's pipeline: through the broker to Celery workers when one is configured, else in-process."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import update

from memo.db import Database, Job, JobState
from memo.jobs import Heartbeat, run_in_background
from memo.pipeline import STAGES, Context, run_pipeline
from memo.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        # in-process, this process holds its queued and running jobs: their heartbeat says it is alive
        self._heartbeat = Heartbeat(db, settings.jobs.heartbeat_s)

    def submit(self, job_id: str) -> Future[None] | None:
        """Queue the whole chain for ``job_id``. In-process, returns the Future of the run."""
        if self.settings.broker_url:
            from celery import chain

            from services.worker.celery_app import QUEUES, celery_app

            app = celery_app(self.settings)
            sigs = [app.signature(f"memo.{s}", queue=QUEUES[s]) for s in STAGES]
            sigs[0] = sigs[0].clone(args=(job_id,))
            chain(*sigs).apply_async()
            with self.db.session() as s:  # the broker keeps it now: no process holds it until a worker starts it
                s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.queued).values(heartbeat_at=None))
            return None
        if self._pool is None:  # one job at a time, like a solo train worker
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memo-pipeline")
        self._heartbeat.hold(job_id)
        return self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        run_in_background(self.settings)  # this pool's one thread runs jobs only
        try:
            run_pipeline(Context(self.db, self.settings), job_id)
        except Exception:  # recorded on the job row by run_stage
            log.info("in-process job %s stopped on an error", job_id)
        finally:
            self._heartbeat.release(job_id)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
        self._heartbeat.close()
