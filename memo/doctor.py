"""``memo doctor``: what a crash between a database row and its files can leave, found and (asked to) repaired.

The writers keep one order, so a crash leaves only what this module can clean: a blob is stored before its
document row and deleted after the row's commit (a crash leaves an orphan blob, never a row without its blob); a
version row is committed before its adapter directory is written; files and directories are written under
temporary names (``*.tmp``, ``*.partial``) and renamed into place (memo.blobs).

What is checked: blobs no live document holds; live documents whose blob is missing; adapter directories of no
version (of a deleted collection, or a version that is not in the database), checkpoints of jobs that finished or
no longer exist; ready versions whose adapter is missing; leftover temporary files and directories. Anything
modified within ``grace_s`` is left alone (an upload or a training may be writing it now).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from memo.blobs import PARTIAL_SUFFIX, TMP_SUFFIX, BlobStore
from memo.db import Chunk, Collection, Database, Document, DocumentStatus, Job, JobState, MemoryVersion, VersionStatus
from memo.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # memo.pipeline.stage_train: adapters/<collection>/checkpoints/<job>
LOST_BLOB = "the uploaded file is missing from the blob store: upload the same file again, then retry this job"


Recent = Callable[[Path], bool]  # False for a path changed within the grace period (counted, left alone)


@dataclass
class Finding:
    kind: str  # orphan-blob, missing-blob, orphan-adapter, orphan-checkpoint, missing-adapter, leftover
    target: str  # a path, or "document <id>" / "version <id>"
    detail: str
    repairable: bool
    repaired: bool = False


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    skipped_recent: int = 0  # candidates younger than the grace period: left alone

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        repaired = sum(f.repaired for f in self.findings)
        counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        text = (
            f"{len(self.findings)} problem(s): {counts}; {repaired} repaired, {len(self.unrepaired)} left"
            if self.findings
            else "no problems found"
        )
        return text + (f"; {self.skipped_recent} recent file(s) left alone" if self.skipped_recent else "")


def check(db: Database, settings: Settings, *, repair: bool = False, grace_s: float = 3600.0) -> Report:
    """Find (and with ``repair``, repair) what a crash left; see the module's doc."""
    report = Report()
    cutoff = time.time() - grace_s

    def old(path: Path) -> bool:
        if path.lstat().st_mtime <= cutoff:
            return True
        report.skipped_recent += 1
        return False

    _leftovers(settings, report, old, repair)
    _blobs(db, settings, report, old, repair)
    _adapters(db, settings, report, old, repair)
    _versions(db, settings, report, repair)
    return report


def _leftovers(settings: Settings, report: Report, old: Recent, repair: bool) -> None:
    """Temporary files and directories of writes a crash interrupted, anywhere under the data directory."""
    root = settings.data_dir.resolve()
    if not root.is_dir():
        return
    for path in sorted(_walk_leftovers(root)):
        if not old(path):
            continue
        f = Finding("leftover", str(path), "an interrupted write's temporary copy", repairable=True)
        if repair:
            _remove(path)
            f.repaired = True
        report.findings.append(f)


def _walk_leftovers(root: Path) -> Iterator[Path]:
    for path in root.iterdir():
        if path.name.endswith((TMP_SUFFIX, PARTIAL_SUFFIX)):
            yield path  # a *.partial directory is removed whole: nothing inside it is looked at
        elif path.is_dir() and not path.is_symlink():
            yield from _walk_leftovers(path)


def _blobs(db: Database, settings: Settings, report: Report, old: Recent, repair: bool) -> None:
    store = BlobStore(settings.blob_dir)
    with db.session() as s:
        live = s.execute(
            select(Document.id, Document.content_hash, Document.status, Document.filename).where(
                Document.status != DocumentStatus.deleted
            )
        ).all()
        parsed = set(s.scalars(select(Chunk.document_id).distinct()))
    held = {digest for _, digest, _, _ in live}
    if live and not settings.blob_dir.is_dir():  # not every file lost: the wrong data directory, or not mounted
        detail = f"{len(live)} documents, and no blob directory: is MEMO_DATA_DIR right, its volume mounted?"
        report.findings.append(Finding("missing-blob", str(settings.blob_dir), detail, repairable=False))
        return
    if settings.blob_dir.is_dir():
        for path in sorted(p for p in settings.blob_dir.glob("*/*") if p.is_file()):
            if path.name.endswith(TMP_SUFFIX) or path.name in held or not old(path):
                continue
            f = Finding("orphan-blob", str(path), "no document holds this blob", repairable=True)
            if repair:
                path.unlink(missing_ok=True)
                f.repaired = True
            report.findings.append(f)
    for doc_id, digest, status, filename in live:
        if store.has(digest) or (status == DocumentStatus.failed and doc_id not in parsed):
            continue  # a failed upload's lost file is known: its job says so, and uploading it again restores it
        if doc_id in parsed:  # its text is in its chunks: the pipeline and the memory do not need the file again
            detail = f"{filename!r}: its file is lost (its text is kept in its chunks); upload the file again"
            report.findings.append(Finding("missing-blob", f"document {doc_id}", detail, repairable=False))
            continue
        f = Finding("missing-blob", f"document {doc_id}", f"{filename!r} ({status.value}): {LOST_BLOB}", True)
        if repair:
            _fail_document(db, doc_id)
            f.repaired = True
        report.findings.append(f)


def _fail_document(db: Database, doc_id: str) -> None:
    """A document that cannot be parsed without its lost file: it and its unfinished jobs fail, saying so."""
    with db.session() as s:
        doc = s.get(Document, doc_id)
        assert doc is not None
        doc.status = DocumentStatus.failed
        for job in s.scalars(
            select(Job).where(Job.document_id == doc_id, Job.state.in_([JobState.queued, JobState.failed]))
        ):
            job.state, job.error, job.heartbeat_at = JobState.failed, LOST_BLOB, None


def _adapters(db: Database, settings: Settings, report: Report, old: Recent, repair: bool) -> None:
    root = settings.adapter_dir
    if not root.is_dir():
        return
    with db.session() as s:
        collections = set(s.scalars(select(Collection.id)))
        versions = {(c, v) for c, v in s.execute(select(MemoryVersion.collection_id, MemoryVersion.id))}
        # and every folder a version's paths lie in (a copy of a collection, made by memo eval, shares its
        # original's adapter folders by path)
        for v in s.scalars(select(MemoryVersion)):
            for named in version_paths(v):
                parts = Path(named).parts[len(root.parts) :] if Path(named).is_relative_to(root) else ()
                if len(parts) >= 2:
                    versions.add((parts[0], parts[1]))
        # a failed or cancelled job may be retried from its checkpoint
        resumable = set(s.scalars(select(Job.id).where(Job.state != JobState.succeeded)))
    orphans: list[tuple[str, Path, str]] = []
    for coll in sorted(p for p in root.iterdir() if not p.name.endswith(PARTIAL_SUFFIX)):
        if coll.name not in collections and not any(c == coll.name for c, _ in versions):
            orphans.append(("orphan-adapter", coll, "adapters of a collection that does not exist"))
            continue
        for sub in sorted(p for p in coll.iterdir() if not p.name.endswith(PARTIAL_SUFFIX)):
            if sub.name == CHECKPOINTS:
                for ckpt in sorted(p for p in sub.iterdir() if not p.name.endswith(PARTIAL_SUFFIX)):
                    if ckpt.name not in resumable:
                        orphans.append(("orphan-checkpoint", ckpt, "checkpoint of a finished or unknown job"))
            elif (coll.name, sub.name) not in versions:
                orphans.append(("orphan-adapter", sub, "no memory version row references this directory"))
    for kind, path, detail in orphans:
        if not old(path):
            continue
        f = Finding(kind, str(path), detail, repairable=True)
        if repair:
            _remove(path)
            f.repaired = True
        report.findings.append(f)


def version_paths(version: MemoryVersion) -> list[str]:
    """Every file-system path a version row names: what it serves, its delta, its ledger's task vectors."""
    paths = [version.adapter_path, version.delta_path, *(e.get("path") for e in version.ledger or [])]
    return [p for p in paths if isinstance(p, str) and p]


def _versions(db: Database, settings: Settings, report: Report, repair: bool) -> None:
    """Ready versions whose served adapter is gone: they can never be served again, so they are marked failed (an
    active one stops being served: its collection needs another version activated, or a consolidation)."""
    with db.session() as s:
        rows = s.scalars(select(MemoryVersion).where(MemoryVersion.status == VersionStatus.ready)).all()
        if rows and not settings.adapter_dir.is_dir():  # as for blobs: a wrong or unmounted data directory
            detail = (
                f"{len(rows)} ready versions, and no adapter directory: is MEMO_DATA_DIR right, its volume mounted?"
            )
            report.findings.append(Finding("missing-adapter", str(settings.adapter_dir), detail, repairable=False))
            return
        for v in rows:
            if v.adapter_path and Path(v.adapter_path).exists():
                continue
            detail = f"collection {v.collection_id}: its adapter {v.adapter_path} is missing"
            if v.active:
                detail += " (it was the active version: activate another one, or consolidate the collection)"
            f = Finding("missing-adapter", f"version {v.id}", detail, repairable=True)
            if repair:
                v.status, v.active = VersionStatus.failed, False
                v.metrics = {**v.metrics, "error": f"adapter missing: {v.adapter_path} (memo doctor)"}
                f.repaired = True
            report.findings.append(f)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def log_check(db: Database, settings: Settings) -> Report | None:
    """The start-up check of the gateway and the worker: report, never repair (``memo doctor --repair`` does); a
    check that cannot run (a database not migrated yet, unreachable) is logged and never stops the start."""
    try:
        report = check(db, settings)
    except Exception:
        log.warning("data check failed", exc_info=True)
        return None
    if report.findings:
        log.warning("data check: %s; run `memo doctor` for the list, `memo doctor --repair` to clean", report.summary())
    else:
        log.info("data check: %s", report.summary())
    return report
