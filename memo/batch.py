"""Batch ingestion in this process: upload files into a collection and run the pipeline on them together.

The CLI's ``memo ingest``, the evaluation harness and the benchmarks all ingest through :func:`ingest_files`; the
gateway instead runs one job per upload, through the broker or in a background thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import select

from memo import catalog
from memo.db import Database, Document, Job, JobKind, JobState
from memo.errors import InvalidInput, MemoError
from memo.ingest.archive import open_zip
from memo.ingest.parse import SUPPORTED
from memo.jobs import Heartbeat
from memo.pipeline import DOCUMENT_STAGES, STAGES, Context, run_stage
from memo.settings import Settings

log = logging.getLogger(__name__)

StageRunner = Callable[[str, list[str], Callable[[str], object], int], None]
"""``runner(stage, job_ids, fn, workers)`` calls ``fn(job_id)`` for every job (:func:`run_each`, or the same wrapped
in progress bars: :func:`memo.progress.bar_runner`)."""


def run_each(
    job_ids: list[str], fn: Callable[[str], object], workers: int, done: Callable[[], object] = lambda: None
) -> None:
    """``fn(job_id)`` for every job, ``workers`` of them at a time in threads, ``done()`` after each (in the calling
    thread). The first failure is raised once the jobs already running have finished; jobs not started yet are not
    started (as a one-at-a-time loop stops at its first failure)."""
    if workers <= 1 or len(job_ids) <= 1:
        for job_id in job_ids:
            fn(job_id)
            done()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
        futures = [pool.submit(fn, job_id) for job_id in job_ids]
        try:
            for future in as_completed(futures):
                future.result()
                done()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _plain_runner(stage: str, job_ids: list[str], fn: Callable[[str], object], workers: int) -> None:
    run_each(job_ids, fn, workers)


def run_batch(
    ctx: Context, job_ids: list[str], runner: StageRunner = _plain_runner, stages: Sequence[str] = STAGES
) -> dict[str, float]:
    """Several new documents of one collection: parse and reflect each (``settings.ingest_concurrency`` documents at
    once), then train and publish once on the union (as the last job); the other jobs are marked as covered by that
    version. A document that is bad input (unparseable, nothing to learn) fails its own job, with the reason, and
    is left out; the batch goes on without it (any other error stops the batch). Returns seconds per stage.
    ``stages`` (in pipeline order) runs only those, e.g. the document stages alone for a benchmark of reflection."""
    heartbeat = Heartbeat(ctx.db, ctx.settings.jobs.heartbeat_s)  # the batch holds its jobs until it ends
    for job_id in job_ids:
        heartbeat.hold(job_id)
    try:
        return _run_batch(ctx, job_ids, runner, stages)
    finally:
        heartbeat.close()


def _run_batch(
    ctx: Context,
    job_ids: list[str],
    runner: StageRunner,
    stages: Sequence[str],
) -> dict[str, float]:
    seconds: dict[str, float] = {}
    left_out: dict[str, str] = {}

    def document_stage(job_id: str, stage: str) -> None:
        if job_id in left_out:
            return
        try:
            run_stage(ctx, job_id, stage)
        except InvalidInput as exc:  # recorded on the job row by run_stage
            log.warning("job %s left out of the batch: %s", job_id, exc.message)
            left_out[job_id] = exc.message

    for stage in STAGES:
        if stage not in stages:
            continue
        per_document = stage in DOCUMENT_STAGES
        if not per_document:
            job_ids = [j for j in job_ids if j not in left_out]
            if not job_ids:
                raise InvalidInput(f"no document of the batch can be learned: {next(iter(left_out.values()))}")
        ids = job_ids if per_document else job_ids[-1:]
        workers = ctx.settings.ingest_concurrency if per_document else 1
        fn = (
            (lambda j, st=stage: document_stage(j, st)) if per_document else (lambda j, st=stage: run_stage(ctx, j, st))
        )
        started = time.perf_counter()
        runner(stage, ids, fn, workers)  # type: ignore[arg-type]
        seconds[stage] = time.perf_counter() - started
    if STAGES[-1] not in stages:  # nothing was published: the jobs stay where their stages left them
        return seconds
    with ctx.db.session() as s:
        last = s.get(Job, job_ids[-1])
        assert last is not None
        if last.state != JobState.succeeded:  # cancelled: the batch's documents were not published
            return seconds
        for job_id in job_ids[:-1]:
            job = s.get(Job, job_id)
            assert job is not None
            if job.state == JobState.cancelled:
                continue
            job.memory_version_id = last.memory_version_id
            job.state, job.stage = JobState.succeeded, "done"
    return seconds


def find_documents(paths: Iterable[Path], max_unpacked: int) -> list[Path | tuple[str, bytes]]:
    """The files to ingest: each file given, every supported file under each directory (sorted), and every
    supported file in each ``.zip`` given (as (its path in the zip, bytes), read with bounded decompression:
    ``max_unpacked`` bytes in all)."""
    files: list[Path | tuple[str, bytes]] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUPPORTED)
        elif p.is_file() and p.suffix.lower() == ".zip":
            with open_zip(p.read_bytes(), max_unpacked, str(p)) as archive:
                members = [
                    m.filename
                    for m in archive.infolist()
                    if not m.is_dir()
                    and PurePosixPath(m.filename).suffix.lower() in SUPPORTED
                    and not m.filename.startswith("__MACOSX/")
                ]
                files += [(name, archive.read(name)) for name in sorted(members)]
        elif p.is_file():
            files.append(p)
        else:
            raise InvalidInput(f"{p} does not exist")
    if not files:
        raise InvalidInput(f"no documents found (supported: {', '.join(SUPPORTED)}, in folders or a .zip)")
    return files


@dataclass
class Ingested:
    """What :func:`ingest_files` did."""

    collection_id: str
    job_ids: list[str] = field(default_factory=list)  # the jobs run, in upload order (the last one trained)
    document_ids: list[str] = field(default_factory=list)  # the document of each job
    skipped: list[str] = field(default_factory=list)  # names of files whose bytes the collection already holds
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, error) of documents left out
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    @property
    def learned(self) -> int:
        """Documents of this batch that are in the published memory."""
        return len(self.job_ids) - len(self.failed)


def ingest_files(
    db: Database,
    settings: Settings,
    collection: str,
    files: Iterable[Path | tuple[str, bytes]],
    *,
    runner: StageRunner = _plain_runner,
    stages: Sequence[str] = STAGES,
    resume: bool = False,
) -> Ingested:
    """Upload ``files`` (paths, or (file name, bytes)) into the collection named ``collection`` (created if there is
    none) and run :func:`run_batch` on the new documents in this process. A file whose bytes the collection already
    holds is skipped; with ``resume``, its latest job is run again unless it succeeded (an interrupted run goes on
    where it stopped: every stage is idempotent). A file the service refuses (type, size, encoding) raises, naming
    the file, before anything runs and with none of the uploads recorded; a document the pipeline cannot learn from
    is left out of the batch and listed in ``failed``."""
    with db.session() as s:
        coll = catalog.collection_by_name(s, collection) or catalog.create_collection(s, collection)
        result = Ingested(coll.id)
    with db.session() as s:
        for f in files:
            if isinstance(f, Path):
                label, name, data = str(f), f.name, f.read_bytes()
            else:
                (name, data), label = f, f[0]
            try:
                up = catalog.add_document(s, settings, result.collection_id, name, data)
            except MemoError as exc:
                raise type(exc)(f"{label}: {exc.message}") from exc
            job = up.job
            if job is None and resume:
                job = s.scalars(
                    select(Job)
                    .where(Job.document_id == up.document.id, Job.kind == JobKind.ingest)
                    .order_by(Job.created_at.desc())
                ).first()
                if job is not None and job.state == JobState.succeeded:
                    job = None
            if job is None:
                result.skipped.append(name)
            else:
                result.job_ids.append(job.id)
                result.document_ids.append(up.document.id)
    if not result.job_ids:
        return result
    log.info("ingesting %d document(s) into %s", len(result.job_ids), collection)
    result.seconds = run_batch(Context(db, settings), result.job_ids, runner, stages)
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Document.filename, Job.error)
            .join(Document, Document.id == Job.document_id)
            .where(Job.id.in_(result.job_ids), Job.state == JobState.failed)
        ).all()
    order = {job_id: n for n, job_id in enumerate(result.job_ids)}
    result.failed = [(name, error or "") for _, name, error in sorted(rows, key=lambda r: order[r[0]])]
    return result
