"""Backups of one collection: ``memo export`` writes it to one archive, ``memo import`` restores it.

The archive (a gzipped tar) holds ``rows.json`` (every row of the collection: the collection, its documents,
chunks, reflections, reflection sources, reflect units and memory versions, every column), ``blobs/<sha256>`` (the
files of its live documents), ``adapters/<version id>/...`` (its versions' adapter directories) and, last,
``manifest.json``: the format and its version, and the size and sha256 of every other member.

Jobs are not exported: they are the history of the source service's runs (an export waits for none to be live).
An import checks the whole archive (members, sizes, checksums, rows) into a staging directory before it writes
anything; ids are kept unless the collection's id exists already (imported under ``--name`` beside the original),
when every id is remapped to a new one, in the rows, their JSON fields and the adapter paths alike.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import DateTime, Enum, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session

from memo import audit, catalog
from memo.blobs import PARTIAL_SUFFIX, BlobStore, write_file_atomic
from memo.db import (
    Chunk,
    Collection,
    Database,
    Document,
    DocumentStatus,
    Job,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    ReflectUnit,
)
from memo.doctor import version_paths
from memo.errors import Conflict, InvalidInput, NotFound
from memo.jobs import LIVE_STATES
from memo.settings import Settings

FORMAT, FORMAT_VERSION = "memo-collection", 1
MANIFEST, ROWS = "manifest.json", "rows.json"
# in the order they are inserted (each row's references before it)
TABLES: list[type[DeclarativeBase]] = [
    Collection,
    Document,
    Chunk,
    Reflection,
    ReflectionSource,
    ReflectUnit,
    MemoryVersion,
]


def export_collection(db: Database, settings: Settings, name: str, out: Path) -> str:
    """Write the collection named ``name`` to the archive ``out`` (atomically); returns a one-line summary."""
    started = time.perf_counter()
    with db.session() as s:  # one transaction: a consistent snapshot of the rows
        coll = catalog.collection_by_name(s, name)
        if coll is None:
            raise NotFound(f"no collection named {name!r}")
        live = s.scalars(select(Job.id).where(Job.collection_id == coll.id, Job.state.in_(LIVE_STATES))).first()
        if live is not None:
            raise Conflict(f"job {live} of {name!r} is queued or running; export when it has finished")
        rows = {model.__tablename__: _rows(s, model, coll.id) for model in TABLES}
    store = BlobStore(settings.blob_dir)
    files: dict[str, Path] = {}
    parsed = {c["document_id"] for c in rows["chunks"]}
    for doc in rows["documents"]:
        if doc["status"] == DocumentStatus.deleted.value:
            continue
        if not store.has(doc["content_hash"]):
            if doc["status"] == DocumentStatus.failed.value and doc["id"] not in parsed:
                continue  # a failed upload whose file was lost (memo doctor): exported as it is, without one
            raise Conflict(f"document {doc['id']}'s file is missing from the blob store: run memo doctor")
        files[f"blobs/{doc['content_hash']}"] = store.path(doc["content_hash"])
    root = settings.adapter_dir / coll.id
    with db.session() as s:
        for v in s.scalars(select(MemoryVersion).where(MemoryVersion.collection_id == coll.id)):
            outside = [p for p in version_paths(v) if not Path(p).is_relative_to(root)]
            if outside:  # e.g. a copy made by memo eval, which shares its original's adapter folders
                raise Conflict(f"version {v.id} of {name!r} uses adapter files of another collection: {outside[0]}")
    for version in rows["memory_versions"]:
        folder = root / version["id"]
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                if f.is_file() and not any(p.endswith(PARTIAL_SUFFIX) for p in f.relative_to(root).parts):
                    files[f"adapters/{f.relative_to(root).as_posix()}"] = f
    rows_json = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()
    members: dict[str, dict[str, Any]] = {ROWS: {"size": len(rows_json), "sha256": _sha256(rows_json)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:  # adapter weights hardly compress: fast
            _add(tar, ROWS, rows_json)
            for arcname, path in files.items():
                try:
                    data = path.read_bytes()
                except FileNotFoundError as exc:  # deleted since the rows were read
                    raise Conflict(f"the collection changed during the export ({exc.filename}); export again") from exc
                members[arcname] = {"size": len(data), "sha256": _sha256(data)}
                _add(tar, arcname, data)
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "exported_at": datetime.now(UTC).isoformat(),
                "collection": {"id": coll.id, "name": coll.name},
                "adapter_root": str(root),  # the prefix of the versions' paths, rewritten on import
                "counts": {table: len(r) for table, r in rows.items()},
                "members": members,
            }
            _add(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        with open(tmp, "rb+") as f:  # on disk before it takes the archive's name
            os.fsync(f.fileno())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    size = out.stat().st_size
    return f"{_counts(manifest['counts'])}, {len(files)} files, {size} bytes in {time.perf_counter() - started:.2f} s"


def import_collection(db: Database, settings: Settings, archive: Path, name: str | None = None) -> tuple[str, str]:
    """Restore the collection in ``archive`` (under ``name``, else its own); all or nothing. Returns its id and a
    one-line summary."""
    started = time.perf_counter()
    if not archive.is_file():
        raise NotFound(f"no archive at {archive}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    staging = settings.data_dir.resolve() / f"import-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    placed: list[Path] = []  # files and directories this import put in place: removed if it fails
    try:
        manifest, rows = _unpack(archive, staging)
        source = manifest["collection"]
        name = name if name is not None else source["name"]
        _check_name(name)
        with db.session() as s:
            if catalog.collection_by_name(s, name) is not None:
                raise Conflict(f"a collection named {name!r} exists already: import with --name NEW")
            ids = _new_ids(rows) if s.get(Collection, source["id"]) is not None else {}
            rows = _remap(rows, ids)
            new_id = ids.get(source["id"], source["id"])
            root = settings.adapter_dir / new_id
            rows = _rebase(rows, _remap(manifest["adapter_root"], ids), str(root))
            rows["collections"][0]["name"] = name
            _insert(s, rows, archive)
            # files before the commit: a crash between leaves orphans (memo doctor), never rows without files
            store = BlobStore(settings.blob_dir)
            for blob in sorted((staging / "blobs").glob("*")) if (staging / "blobs").is_dir() else []:
                if store.put(blob.name, blob.read_bytes()):
                    placed.append(store.path(blob.name))
            if (staging / "adapters").is_dir():
                if root.exists():
                    raise Conflict(f"{root} exists already: run memo doctor --repair")
                for folder in list((staging / "adapters").iterdir()):  # adapters/<version id>
                    folder.rename(folder.with_name(ids.get(folder.name, folder.name)))
                root.parent.mkdir(parents=True, exist_ok=True)
                (staging / "adapters").rename(root)
                placed.append(root)
            audit.record(s, None, "collection.import", f"collection/{new_id}", None, {"archive": str(archive)})
        placed.clear()  # committed
    finally:
        for path in placed:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    summary = f"{_counts(manifest['counts'])} in {time.perf_counter() - started:.2f} s"
    return new_id, summary


def _insert(session: Session, rows: dict[str, list[dict[str, Any]]], archive: Path) -> None:
    """Insert the archive's rows (in the caller's transaction); rows the database refuses are a damaged archive."""
    try:
        for model in TABLES:
            table_rows = rows[model.__tablename__]
            if model is MemoryVersion:
                table_rows = _parents_first(table_rows)
            if table_rows:
                session.execute(insert(model.__table__), [_from_json(model, r) for r in table_rows])  # type: ignore[arg-type]
        session.flush()
    except (SQLAlchemyError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"{archive}: its rows cannot be restored: {str(exc).splitlines()[0]}") from exc


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > 200 or not catalog.clean_text(name, lines=False):
        raise InvalidInput(f"{name!r} is not a valid collection name")


def _unpack(archive: Path, staging: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The manifest and rows of ``archive``, its files extracted under ``staging``; every member checked against
    the manifest (name, size, sha256) and nothing outside it. A damaged archive is an InvalidInput."""
    staging.mkdir(parents=True)
    seen: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    rows_data: bytes | None = None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name).parts
                if not member.isfile() or name.startswith("/") or ".." in parts or "\\" in name:
                    raise InvalidInput(f"the archive holds {name!r}, which is not a file of a memo export")
                f = tar.extractfile(member)
                assert f is not None
                data = f.read()
                if name == MANIFEST:
                    manifest = json.loads(data)
                    continue
                if name == ROWS:
                    rows_data = data
                elif parts[0] in ("blobs", "adapters") and len(parts) > 1:
                    target = staging.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    write_file_atomic(target, data)
                else:
                    raise InvalidInput(f"the archive holds {name!r}, which is not a file of a memo export")
                seen[name] = {"size": len(data), "sha256": _sha256(data)}
    except (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{archive} is not a readable memo export (damaged or truncated): {exc}") from exc
    if manifest is None or manifest.get("format") != FORMAT:
        raise InvalidInput(f"{archive} is not a memo export: it has no {MANIFEST} of format {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise InvalidInput(f"{archive} is format version {manifest.get('version')}; this memo reads {FORMAT_VERSION}")
    if not all(isinstance(manifest.get(k), dict) for k in ("collection", "counts", "members")) or not isinstance(
        manifest.get("adapter_root"), str
    ):
        raise InvalidInput(f"{archive}: its {MANIFEST} is incomplete")
    expected = manifest.get("members", {})
    for member_name in sorted(set(expected) | set(seen)):
        if expected.get(member_name) != seen.get(member_name):
            raise InvalidInput(f"{archive} is damaged: {member_name} does not match its manifest entry")
    assert rows_data is not None  # in the manifest, so seen
    rows = json.loads(rows_data)
    tables = sorted(m.__tablename__ for m in TABLES)
    if (
        not isinstance(rows, dict)
        or sorted(rows) != tables
        or not all(isinstance(t, list) and all(isinstance(r, dict) for r in t) for t in rows.values())
        or len(rows["collections"]) != 1
        or rows["collections"][0].get("id") != manifest["collection"].get("id")
    ):
        raise InvalidInput(f"{archive}: its rows are not one collection's")
    return manifest, rows


def _rows(session: Session, model: type[DeclarativeBase], collection_id: str) -> list[dict[str, Any]]:
    """Every row of ``model`` that belongs to the collection, each column as JSON, in a stable order."""
    table = model.__table__
    if model is Collection:
        where = table.c.id == collection_id
    elif "collection_id" in table.c:
        where = table.c.collection_id == collection_id
    else:  # chunks, sources, units: through their document
        docs = select(Document.id).where(Document.collection_id == collection_id).scalar_subquery()
        where = table.c.document_id.in_(docs)
    order = list(table.primary_key)
    return [_to_json(model, dict(r)) for r in session.execute(select(table).where(where).order_by(*order)).mappings()]


def _to_json(model: type[DeclarativeBase], row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for col in model.__table__.columns:
        value = row[col.name]
        if isinstance(value, datetime):  # SQLite gives back naive UTC times
            value = (value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        out[col.name] = value
    return out


def _from_json(model: type[DeclarativeBase], row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for col in model.__table__.columns:
        if col.name not in row:
            raise InvalidInput(f"a {model.__tablename__} row of the archive has no {col.name}")
        value = row[col.name]
        if value is not None and isinstance(col.type, DateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(col.type, Enum) and col.type.enum_class is not None:
            value = col.type.enum_class(value)
        out[col.name] = value
    return out


def _new_ids(rows: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """A new id for every row id of the archive (the collection's exists in this database)."""
    return {r["id"]: uuid.uuid4().hex for table in rows.values() for r in table if "id" in r}


def _remap(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every id of ``ids`` replaced, in strings (whole, or a segment of a path), lists and dicts
    (keys too: a version's per-reflection losses are keyed by reflection id)."""
    if not ids:
        return value
    if isinstance(value, str):
        return "/".join(ids.get(part, part) for part in value.split("/"))
    if isinstance(value, list):
        return [_remap(v, ids) for v in value]
    if isinstance(value, dict):
        return {_remap(k, ids): _remap(v, ids) for k, v in value.items()}
    return value


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with paths under the source's adapter root ``old`` moved under ``new``."""
    if isinstance(value, str):
        return new + value[len(old) :] if value == old or value.startswith(old + "/") else value
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    return value


def _parents_first(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {v["id"]: v for v in versions}
    ordered: list[dict[str, Any]] = []
    done: set[str] = set()

    def visit(v: dict[str, Any]) -> None:
        if v["id"] in done:
            return
        done.add(v["id"])
        if v["parent_id"] in by_id:
            visit(by_id[v["parent_id"]])
        ordered.append(v)

    for v in versions:
        visit(v)
    return ordered


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[m.__tablename__]} {m.__tablename__}" for m in TABLES if m is not Collection)
