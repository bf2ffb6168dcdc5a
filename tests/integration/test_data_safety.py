"""Data safety on real files and real databases (SQLite and PostgreSQL): ``memo doctor`` on a data directory a
crash left broken, and ``memo export`` / ``memo import`` round trips of a collection (rows, blobs, adapter files)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from memo import catalog
from memo.blobs import BlobStore
from memo.db import (
    Base,
    Chunk,
    Collection,
    Database,
    Document,
    DocumentStatus,
    Job,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    ReflectUnit,
    VersionStatus,
)
from memo.settings import Settings
from services.cli import app as cli
from tests.conftest import make_settings

DOC_0 = "# Doc 0\n\nStaff get 23 days of leave. ✈️\n".encode()
TABLES = [Collection, Document, Chunk, Reflection, ReflectionSource, ReflectUnit, MemoryVersion]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgres" else None


def _settings(tmp_path: Path, name: str, database_url: str | None) -> Settings:
    return make_settings(tmp_path / name, database_url=database_url)


def _run(settings: Settings, *args: str):  # type: ignore[no-untyped-def]
    """The real CLI, on ``settings``' data directory and database."""
    env = {"MEMO_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["MEMO_DATABASE_URL"] = settings.database_url
    return CliRunner().invoke(cli, list(args), env=env)


def _adapter(folder: Path, seed: int) -> None:
    """A small stand-in for a peft adapter directory: real files, binary weights."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096 + seed))


def _collection(db: Database, settings: Settings, name: str = "hr") -> str:
    """A collection as the pipeline leaves it: three documents (one deleted), chunks, reflections with
    cross-document provenance, a reflect unit, a retrained version and a merge version on top of it (ledger,
    metrics keyed by reflection id), their adapter directories on disk, and a finished job."""
    with db.session() as s:
        coll = catalog.create_collection(s, name)
        cid = coll.id
        docs = []
        for i, data in enumerate([DOC_0, "# Doc 1\n\nمرحبا: travel is booked by the office.\n".encode(), b"Old."]):
            up = catalog.add_document(s, settings, cid, f"doc-{i}.md", data)
            docs.append(up.document)
            assert up.job is not None
            up.job.state, up.job.stage = JobState.succeeded, "done"
        chunks = []
        for d in docs[:2]:
            c = Chunk(document_id=d.id, seq=0, text=f"chunk of {d.filename}", reflected_version="v3")
            s.add(c)
            s.flush()
            chunks.append(c)
            d.status = DocumentStatus.trained
        catalog.remove_document(s, cid, docs[2].id)  # a tombstone: no chunks, no blob (deleted after commit)
        refl = []
        for i, (d, c) in enumerate(zip(docs[:2], chunks, strict=True)):
            r = Reflection(
                collection_id=cid, document_id=d.id, chunk_id=c.id, kind="direct", question=f"Q{i}?",
                answer=f"A{i} — ünïcode", question_hash=hashlib.sha256(f"Q{i}".encode()).hexdigest(),
            )  # fmt: skip
            s.add(r)
            s.flush()
            refl.append(r)
            s.add(ReflectionSource(reflection_id=r.id, chunk_id=c.id, document_id=d.id))
        s.add(ReflectionSource(reflection_id=refl[1].id, chunk_id=chunks[0].id, document_id=docs[0].id))  # cross
        s.add(ReflectUnit(document_id=docs[0].id, stage="direct", work_key="k" * 64, stats={"pairs": 1, "t": 0.5}))
        root = settings.adapter_dir / cid
        v1 = MemoryVersion(collection_id=cid, base_model="base", status=VersionStatus.ready, documents=[docs[0].id])
        s.add(v1)
        s.flush()
        v1.adapter_path = str(root / v1.id)
        v1.ledger = [{"path": v1.adapter_path, "documents": [docs[0].id], "examples": 1}]
        v1.metrics = {"heldout_ids": [refl[0].id], "pair_losses": {refl[0].id: 0.125}, "loss": 0.3}
        v2 = MemoryVersion(
            collection_id=cid, base_model="base", mode="merge", parent_id=v1.id, status=VersionStatus.ready,
            active=True, documents=[d.id for d in docs[:2]], n_reflections=2,
        )  # fmt: skip
        s.add(v2)
        s.flush()
        v2.adapter_path, v2.delta_path = str(root / v2.id / "merged"), str(root / v2.id / "delta")
        v2.ledger = [*v1.ledger, {"path": v2.delta_path, "documents": [docs[1].id], "examples": 1}]
        v2.metrics = {"pair_losses": {r.id: 0.5 for r in refl}, "gate": {"passed": True, "recall": 0.75}}
        s.add(Job(collection_id=cid, kind="consolidate", state=JobState.succeeded, memory_version_id=v2.id))
        deleted_blob = docs[2].content_hash
    BlobStore(settings.blob_dir).delete(deleted_blob)
    _adapter(root / v1.id, 1)
    _adapter(root / v2.id / "merged", 2)
    _adapter(root / v2.id / "delta", 3)
    return cid


def _dump(db: Database, collection_id: str) -> dict[str, list[dict]]:
    """Every row of the collection, every column (times as UTC)."""
    from memo.backup import _rows

    with db.session() as s:
        return {m.__tablename__: _rows(s, m, collection_id) for m in TABLES}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _db(settings: Settings) -> Database:
    db = Database(settings)
    db.migrate()
    return db


def test_export_import_round_trips_every_row_and_byte(tmp_path, database_url) -> None:
    src = _settings(tmp_path, "src", None)  # exported from SQLite ...
    src_db = _db(src)
    cid = _collection(src_db, src)
    archive = tmp_path / "hr.tar.gz"
    r = _run(src, "export", "hr", "--out", str(archive))
    assert r.exit_code == 0, r.output

    dst = _settings(tmp_path, "dst", database_url)  # ... into a fresh data directory and database of each kind
    r = _run(dst, "import", str(archive))
    assert r.exit_code == 0, r.output
    assert f"as collection {cid}" in r.output  # no clash: ids kept
    before, after = _dump(src_db, cid), _dump(_db(dst), cid)
    # the version paths move with the data directory; nothing else changes
    text = json.dumps(after, sort_keys=True).replace(str(dst.adapter_dir), str(src.adapter_dir))
    assert json.loads(text) == before
    assert {t: len(v) for t, v in before.items()} == {
        "collections": 1, "documents": 3, "chunks": 2, "reflections": 2, "reflection_sources": 3,
        "reflect_units": 1, "memory_versions": 2,
    }  # fmt: skip
    assert _files(dst.blob_dir) == _files(src.blob_dir) and len(_files(dst.blob_dir)) == 2
    assert _files(dst.adapter_dir / cid) == _files(src.adapter_dir / cid)
    for v in after["memory_versions"]:  # the imported version serves its imported adapter
        assert Path(v["adapter_path"]).is_dir() and str(dst.adapter_dir / cid) in v["adapter_path"]

    # a second import into the same place: the name is taken
    r = _run(dst, "import", str(archive))
    assert r.exit_code == 2 and "exists already" in r.output and "--name" in r.output
    # under a new name beside the original: every id remapped, consistently, the same data
    r = _run(dst, "import", str(archive), "--name", "hr-copy")
    assert r.exit_code == 0, r.output
    with _db(dst).session() as s:
        copy_id = s.scalars(select(Collection.id).where(Collection.name == "hr-copy")).one()
    copy = _dump(_db(dst), copy_id)
    assert copy_id != cid
    assert {t: len(v) for t, v in copy.items()} == {t: len(v) for t, v in before.items()}
    old_ids, new_ids = ({r["id"] for t in d.values() for r in t if "id" in r} for d in (before, copy))
    assert not old_ids & new_ids
    assert sorted(r["question"] for r in copy["reflections"]) == ["Q0?", "Q1?"]
    v2 = next(v for v in copy["memory_versions"] if v["mode"] == "merge")
    assert Path(v2["adapter_path"]).is_dir() and copy_id in v2["adapter_path"]
    assert {Path(e["path"]).is_dir() for e in v2["ledger"]} == {True}
    refl = {r["id"] for r in copy["reflections"]}
    assert set(v2["metrics"]["pair_losses"]) == refl  # JSON fields follow the new ids
    assert set(v2["documents"]) == {d["id"] for d in copy["documents"] if d["status"] == "trained"}
    assert _files(dst.adapter_dir / copy_id) != {} and len(_files(dst.adapter_dir / copy_id)) == 6


def _state(settings: Settings, db: Database) -> tuple[dict[str, int], list[str]]:
    from sqlalchemy import func

    with db.session() as s:
        counts = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    files = sorted(str(p.relative_to(settings.data_dir)) for p in settings.data_dir.rglob("*") if p.is_file())
    return counts, [f for f in files if not f.startswith("memo.db")]


def test_a_damaged_archive_is_refused_and_writes_nothing(tmp_path, database_url) -> None:
    src = _settings(tmp_path, "src", None)
    _collection(_db(src), src)
    archive = tmp_path / "hr.tar.gz"
    assert _run(src, "export", "hr", "--out", str(archive)).exit_code == 0
    raw = archive.read_bytes()
    members = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None
            members[m.name] = f.read()

    def repack(changed: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in {**members, **changed}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    blob = next(n for n in members if n.startswith("blobs/"))
    manifest = json.loads(members["manifest.json"])
    rows = json.loads(members["rows.json"])
    rows["memory_versions"][0]["status"] = "bogus"
    rows_bad = json.dumps(rows).encode()

    def forged(rows_data: bytes) -> bytes:  # a manifest that matches altered rows
        entry = {"size": len(rows_data), "sha256": hashlib.sha256(rows_data).hexdigest()}
        return json.dumps({**manifest, "members": {**manifest["members"], "rows.json": entry}}).encode()

    rows_shapeless = json.dumps({**rows, "collections": "hr"}).encode()
    cases = {
        "truncated": (raw[: len(raw) // 2], "damaged or truncated"),
        "not gzip": (b"hello", "damaged or truncated"),
        "bit flip in a blob": (repack({blob: members[blob][:-1] + b"X"}), "does not match its manifest"),
        "a member missing": (_without(members, blob), "does not match its manifest"),
        "path traversal": (repack({"../../evil": b"x"}), "not a file of a memo export"),
        "newer format": (repack({"manifest.json": json.dumps({**manifest, "version": 99}).encode()}), "version 99"),
        "rows the database refuses": (
            repack({"rows.json": rows_bad, "manifest.json": forged(rows_bad)}),
            "cannot be restored",
        ),
        "rows of another shape": (
            repack({"rows.json": rows_shapeless, "manifest.json": forged(rows_shapeless)}),
            "not one collection's",
        ),
    }
    dst = _settings(tmp_path, "dst", database_url)
    dst_db = _db(dst)
    before = _state(dst, dst_db)
    for case, (data, message) in cases.items():
        bad = tmp_path / f"{case}.tar.gz"
        bad.write_bytes(data)
        r = _run(dst, "import", str(bad))
        assert r.exit_code == 2 and message in r.output, (case, r.output)
        assert _state(dst, dst_db) == before, case  # no row, no blob, no adapter, no staging leftover


def _without(members: dict[str, bytes], name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n, data in members.items():
            if n != name:
                info = tarfile.TarInfo(n)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _age(path: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_doctor_finds_and_repairs_what_a_crash_left(tmp_path, database_url) -> None:
    settings = _settings(tmp_path, "data", database_url)
    db = _db(settings)
    cid = _collection(db, settings)
    store = BlobStore(settings.blob_dir)
    assert _run(settings, "doctor").exit_code == 0  # a healthy data directory

    # a crash after the blob, before the row; another just now (an upload under way: left alone)
    store.put("ab" * 32, b"orphan")
    _age(store.path("ab" * 32))
    store.put("cd" * 32, b"in flight")
    # an upload whose blob was lost before it was parsed, and a parsed document whose file was lost
    with db.session() as s:
        up = catalog.add_document(s, settings, cid, "new.txt", b"New policy text.")
        assert up.job is not None
        new_doc, new_job = up.document.id, up.job.id
        parsed = s.scalars(select(Document).where(Document.filename == "doc-0.md")).one()
        parsed_hash = parsed.content_hash
        versions = s.scalars(select(MemoryVersion).where(MemoryVersion.collection_id == cid)).all()
        active = next(v for v in versions if v.active)
        done_job = s.scalars(select(Job.id).where(Job.state == JobState.succeeded)).first()
    store.delete(catalog.content_hash(b"New policy text."))
    store.delete(parsed_hash)
    # adapters: of a version that is no row, of a collection that is gone, a finished job's checkpoint, a failed
    # job's checkpoint (kept: a retry resumes from it), the active version's adapter lost
    root = settings.adapter_dir
    _adapter(root / cid / ("f" * 32), 4)
    _adapter(root / ("e" * 32) / ("d" * 32), 5)
    _adapter(root / cid / "checkpoints" / str(done_job), 6)
    with db.session() as s:
        failed = Job(collection_id=cid, state=JobState.failed, error="killed")
        s.add(failed)
        s.flush()
        failed_id = failed.id
    _adapter(root / cid / "checkpoints" / failed_id, 7)
    import shutil

    shutil.rmtree(Path(active.adapter_path).parent)  # the merge version's folder: merged and delta
    # interrupted writes: a blob's temporary file, a half-written adapter directory
    tmp = settings.blob_dir / "ab" / ".x.123.tmp"
    tmp.write_bytes(b"half")
    _adapter(root / cid / (active.id + ".partial"), 8)
    for p in [tmp, root / cid / (active.id + ".partial"), root / cid / ("f" * 32), root / ("e" * 32)]:
        _age(p)
    _age(root / cid / "checkpoints" / str(done_job))

    r = _run(settings, "doctor")
    assert r.exit_code == 1, r.output
    found = {line.split()[0] for line in r.output.splitlines() if line and not line.startswith(" ")}
    assert {
        "orphan-blob",
        "missing-blob",
        "orphan-adapter",
        "orphan-checkpoint",
        "missing-adapter",
        "leftover",
    } <= found
    assert "9 problem(s)" in r.output and "0 repaired" in r.output
    assert "1 recent file(s) left alone" in r.output  # the blob written just now

    r = _run(settings, "doctor", "--repair")
    assert r.exit_code == 1, r.output  # the parsed document's lost file cannot be made again
    assert "9 problem(s)" in r.output and "8 repaired, 1 left" in r.output and "needs you" in r.output
    assert not store.has("ab" * 32) and store.has("cd" * 32) and not tmp.exists()
    assert not (root / cid / ("f" * 32)).exists() and not (root / ("e" * 32)).exists()
    assert not (root / cid / "checkpoints" / str(done_job)).exists()
    assert (root / cid / "checkpoints" / failed_id).is_dir()
    assert not (root / cid / (active.id + ".partial")).exists()
    with db.session() as s:
        doc, job = s.get(Document, new_doc), s.get(Job, new_job)
        assert doc is not None and job is not None
        assert doc.status == DocumentStatus.failed and job.state == JobState.failed and "upload" in (job.error or "")
        v = s.get(MemoryVersion, active.id)
        assert v is not None and v.status == VersionStatus.failed and not v.active and "missing" in v.metrics["error"]
        assert s.scalars(select(MemoryVersion).where(MemoryVersion.active.is_(True))).first() is None
    r = _run(settings, "doctor")  # what was repaired is not found again
    assert r.exit_code == 1 and "1 problem(s): 1 missing-blob; 0 repaired, 1 left" in r.output, r.output

    # uploading the lost files again restores them: then nothing is left to repair
    with db.session() as s:
        assert catalog.add_document(s, settings, cid, "new.txt", b"New policy text.").duplicate
        assert catalog.add_document(s, settings, cid, "doc-0.md", DOC_0).duplicate
    r = _run(settings, "doctor", "--repair", "--grace", "0")  # and the upload that was under way is now old
    assert r.exit_code == 0 and "1 problem(s): 1 orphan-blob; 1 repaired, 0 left" in r.output, r.output
    assert _run(settings, "doctor").output.strip().endswith("no problems found")


def test_the_gateway_reports_what_a_crash_left_when_it_starts(tmp_path, caplog) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    settings = _settings(tmp_path, "data", None)
    _db(settings)
    BlobStore(settings.blob_dir).put("ab" * 32, b"orphan")
    _age(BlobStore(settings.blob_dir).path("ab" * 32))
    with caplog.at_level("WARNING", logger="memo.doctor"), TestClient(create_app(settings)):
        pass
    [record] = [r for r in caplog.records if r.name == "memo.doctor"]
    assert "1 problem(s): 1 orphan-blob; 0 repaired, 1 left" in record.getMessage()
    assert BlobStore(settings.blob_dir).has("ab" * 32)  # reported, not removed: memo doctor --repair does that


def test_adapter_folders_a_copy_shares_are_kept_and_not_exported(tmp_path) -> None:
    """memo eval's copy of a collection (benchmarks.updates.fork_collection) serves its original's adapter folders by
    path: memo doctor keeps them even once the original is gone, and memo export refuses the copy, saying why."""
    from benchmarks.updates import fork_collection

    settings = _settings(tmp_path, "data", None)
    db = _db(settings)
    cid = _collection(db, settings)
    fork_collection(db, cid, "hr-copy")
    with db.session() as s:
        # its rows go (cascade); its adapter folder stays, the copy serves it
        s.execute(delete(Collection).where(Collection.id == cid))
    folder = settings.adapter_dir / cid
    for p in [folder, *folder.iterdir()]:
        _age(p)
    r = _run(settings, "doctor", "--repair")
    assert r.exit_code == 0 and "no problems found" in r.output, r.output
    assert len(_files(folder)) == 6
    r = _run(settings, "export", "hr-copy", "--out", str(tmp_path / "copy.tar.gz"))
    assert r.exit_code == 2 and "adapter files of another collection" in r.output
    assert not (tmp_path / "copy.tar.gz").exists()


def test_doctor_on_a_wrong_data_directory_repairs_nothing(tmp_path, pg_url) -> None:
    """The database of one data directory checked against another (a typo, a volume not mounted): every file looks
    lost, so nothing is marked failed, only reported."""
    settings = _settings(tmp_path, "data", pg_url)
    db = _db(settings)
    _collection(db, settings)
    before = _dump(db, _collection(db, settings, "finance"))
    wrong = _settings(tmp_path, "empty", pg_url)
    r = _run(wrong, "doctor", "--repair")
    assert r.exit_code == 1, r.output
    assert "2 problem(s): 1 missing-adapter, 1 missing-blob; 0 repaired, 2 left" in r.output
    assert "volume mounted" in r.output
    assert _dump(db, before["collections"][0]["id"]) == before
