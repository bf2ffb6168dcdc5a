"""The Celery app and its thin tasks: a job id in, one library stage, the job id out.

Queues: ``ingest`` (parse, publish), ``generate`` (reflections), ``train`` (one per GPU, solo pool).
Start a worker with ``memo worker`` (all queues) or ``memo worker -Q train``.

:func:`celery_app` is the one place the app is built: the worker consumes with it and the gateway's dispatcher
(:mod:`services.worker.dispatch`) sends chains with it.
"""

from __future__ import annotations

from functools import cache

from celery import Celery, Task
from celery.signals import worker_ready, worker_shutdown

from memo import doctor
from memo.db import Database
from memo.jobs import StaleJobCheck, run_in_background
from memo.pipeline import Context, retry_delay, run_stage
from memo.settings import Settings, get_settings

QUEUES = {"parse": "ingest", "reflect": "generate", "train": "train", "evaluate": "train", "publish": "ingest"}


def celery_app(settings: Settings) -> Celery:
    """The app for ``settings.broker_url``, with the stage tasks registered (built once per broker)."""
    if not settings.broker_url:
        raise ValueError("MEMO_BROKER_URL is not set: without a broker, jobs run in-process")
    return _build(settings.broker_url, settings.jobs.visibility_timeout_s)


@cache
def _build(broker_url: str, visibility_timeout_s: float) -> Celery:
    app = Celery("memo", broker=broker_url)
    app.conf.update(
        task_ignore_result=True,
        # a task is acknowledged when it ends, not when it starts: a worker that dies mid-task leaves the message in
        # the broker. With Redis it comes back after the visibility timeout (JobSettings.visibility_timeout_s);
        # the heartbeat check requeues the job long before, and a second delivery finds it claimed or done
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
        worker_prefetch_multiplier=1,  # a worker holds only the task it runs: the others stay for other workers
        # a broker connection lost mid-task does not cancel the running stage (Celery 6's default would): it goes on,
        # and its job is recovered by the heartbeat and lost-message checks if its message is gone
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        task_routes={f"memo.{stage}": {"queue": q} for stage, q in QUEUES.items()},
    )
    for stage in QUEUES:
        _register(app, stage)
    return app


@cache
def _context() -> Context:
    """The worker process's database and settings (from its environment)."""
    settings = get_settings()
    return Context(Database(settings), settings, via_broker=True)


_checks: list[StaleJobCheck] = []


@worker_ready.connect
def _start_stale_check(**_: object) -> None:
    """A worker that starts requeues the jobs a dead process left (through the broker), then checks periodically."""
    from services.worker.dispatch import Dispatcher

    ctx = _context()
    doctor.log_check(ctx.db, ctx.settings)  # what a crash left: reported (memo doctor)
    dispatcher = Dispatcher(ctx.db, ctx.settings)
    check = StaleJobCheck(ctx.db, ctx.settings, dispatcher.submit)
    check.run_once()
    check.start()
    _checks.append(check)


@worker_shutdown.connect
def _stop_stale_check(**_: object) -> None:
    while _checks:
        _checks.pop().stop()


def _register(app: Celery, stage: str) -> None:
    @app.task(name=f"memo.{stage}", bind=True, max_retries=None)
    def task(self: Task, job_id: str) -> str:
        ctx = _context()
        run_in_background(ctx.settings)  # the solo pool's thread runs tasks only
        attempt = self.request.retries
        try:
            return run_stage(ctx, job_id, stage, attempt=attempt)
        except Exception as exc:
            delay = retry_delay(ctx.settings, exc, attempt)
            if delay is not None:  # an LLM server or the database away for a moment: again after a backoff
                raise self.retry(exc=exc, countdown=delay) from exc
            raise
