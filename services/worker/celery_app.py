"""The Celery app and its thin tasks: a job id in, one library stage, the job id out.

Queues: ``ingest`` (parse, publish), ``generate`` (reflections), ``train`` (one per GPU, solo pool).
Start a worker with ``memo worker`` (all queues) or ``memo worker -Q train``.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from memo.db import Database
from memo.errors import BackendError
from memo.pipeline import Context, run_stage
from memo.settings import get_settings

QUEUES = {"parse": "ingest", "reflect": "generate", "train": "train", "evaluate": "train", "publish": "ingest"}


def make_celery(broker_url: str) -> Celery:
    app = Celery("memo", broker=broker_url)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,  # a worker that dies mid-task leaves the message for another worker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_routes={f"memo.{stage}": {"queue": q} for stage, q in QUEUES.items()},
    )
    return app


@cache
def _context() -> Context:
    settings = get_settings()
    return Context(Database(settings), settings)


celery_app = make_celery(get_settings().broker_url or "redis://127.0.0.1:6379/0")


def _task(stage: str):  # type: ignore[no-untyped-def]
    @celery_app.task(
        name=f"memo.{stage}",
        autoretry_for=(BackendError,),  # an LLM server that is down or restarting: try again later
        retry_backoff=True,
        max_retries=5,
    )
    def task(job_id: str) -> str:
        return run_stage(_context(), job_id, stage)

    return task


parse_task = _task("parse")
reflect_task = _task("reflect")
train_task = _task("train")
evaluate_task = _task("evaluate")
publish_task = _task("publish")
