"""Progress bars for pipeline stages run in this process (the CLI and the evaluation harness)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tqdm import tqdm

from memo.batch import StageRunner, run_each
from memo.db import Database, Job


def _follow(db: Database, job_id: str, stage: str, fn: Callable[[], object], leave: bool) -> None:
    """Run ``fn`` in a thread while a progress bar follows the job row's done/total."""
    err: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=target)
    t.start()
    with tqdm(desc=stage, unit="step", leave=leave) as bar:
        while t.is_alive():
            t.join(0.5)
            with db.session() as s:
                job = s.get(Job, job_id)
                if job is not None and job.total and (job.total, job.done) != (bar.total, bar.n):
                    bar.total = job.total
                    bar.update(job.done - bar.n)
    if err:
        raise err[0]


def bar_runner(db: Database, *, leave: bool = True) -> StageRunner:
    """A :func:`memo.batch.ingest_files` runner: one bar per document for batched stages, the job's own
    done/total for a stage of a single job."""

    def runner(stage: str, job_ids: list[str], fn: Callable[[str], object], workers: int) -> None:
        if len(job_ids) > 1 or stage in ("parse", "publish"):
            with tqdm(total=len(job_ids), desc=stage, unit="doc", leave=leave) as bar:
                run_each(job_ids, fn, workers, lambda: bar.update(1))
        else:
            _follow(db, job_ids[0], stage, lambda: fn(job_ids[0]), leave)

    return runner
