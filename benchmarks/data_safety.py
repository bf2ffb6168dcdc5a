"""Figures of ``memo export`` / ``memo import`` and ``memo doctor`` (results/reliability), on a sample collection
made here: the sample corpus's documents, chunks and reflections with provenance in the database, and memory
versions whose adapters are real peft LoRA adapters of the packaged SmolLM2 (rank 16 on every projection, as
training saves them; untrained: their bytes, not their weights, matter here). No model is trained.

    python -m benchmarks.data_safety --out results/reliability [--database-url postgresql+psycopg://...]

writes ``data_safety_<database>.json`` there (the database the collection is imported into).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from memo import backup, catalog, doctor
from memo.blobs import BlobStore
from memo.db import (
    Chunk,
    Database,
    Document,
    DocumentStatus,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    VersionStatus,
)
from memo.settings import Settings, get_settings

CORPUS = Path(__file__).resolve().parents[1] / "samples" / "corpus"
PAIRS_PER_CHUNK = 20


def _lora(base: str, out: Path, seed: int) -> None:
    """A peft LoRA adapter of ``base`` as training saves it (memo.settings.Recipe's rank and modules)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=modules, init_lora_weights=False))
    peft.save_pretrained(str(out))


def sample_collection(db: Database, settings: Settings, base: str) -> str:
    """The sample corpus as a trained collection: a retrained version and a merge version on top of it."""
    with db.session() as s:
        cid = catalog.create_collection(s, "sample").id
        docs = []
        for path in sorted(CORPUS.iterdir()):
            up = catalog.add_document(s, settings, cid, path.name, path.read_bytes())
            assert up.job is not None
            up.job.state = JobState.succeeded
            docs.append(up.document)
        reflections: list[str] = []
        for d in docs:
            words = BlobStore(settings.blob_dir).get(d.content_hash).decode().split()
            for seq, start in enumerate(range(0, len(words), 120)):
                text = " ".join(words[start : start + 140])
                chunk = Chunk(document_id=d.id, seq=seq, text=text, reflected_version="5")
                s.add(chunk)
                s.flush()
                for i in range(PAIRS_PER_CHUNK):
                    q = f"Question {i} about {d.filename} part {seq}?"
                    r = Reflection(
                        collection_id=cid, document_id=d.id, chunk_id=chunk.id, kind="direct", question=q,
                        answer=" ".join(words[start + i : start + i + 12]),
                        question_hash=hashlib.sha256(q.encode()).hexdigest(),
                    )  # fmt: skip
                    s.add(r)
                    s.flush()
                    s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=d.id))
                    reflections.append(r.id)
            d.status = DocumentStatus.trained
        root = settings.adapter_dir / cid
        v1 = MemoryVersion(collection_id=cid, base_model=base, status=VersionStatus.ready, documents=[docs[0].id])
        s.add(v1)
        s.flush()
        v1.adapter_path = str(root / v1.id)
        v1.ledger = [{"path": v1.adapter_path, "documents": [docs[0].id], "examples": 40}]
        v1.metrics = {"pair_losses": {r: 0.5 for r in reflections}, "loss": 0.4}
        v2 = MemoryVersion(
            collection_id=cid, base_model=base, mode="merge", parent_id=v1.id, status=VersionStatus.ready,
            active=True, documents=[d.id for d in docs],
        )  # fmt: skip
        s.add(v2)
        s.flush()
        v2.adapter_path, v2.delta_path = str(root / v2.id / "merged"), str(root / v2.id / "delta")
        v2.ledger = [*v1.ledger, {"path": v2.delta_path, "documents": [d.id for d in docs[1:]], "examples": 80}]
        v2.metrics = {"pair_losses": {r: 0.25 for r in reflections}, "gate": {"passed": True}}
        v1_dir, v2_dir = root / v1.id, root / v2.id
    _lora(base, v1_dir, 1)
    _lora(base, v2_dir / "delta", 2)
    _lora(base, v2_dir / "merged", 3)
    return cid


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - start, 3)


def _age(path: Path) -> None:
    t = time.time() - 7200
    os.utime(path, (t, t))


SCALE_DOCUMENTS = 5000


def _check_at_scale(work: Path, n: int) -> dict[str, Any]:
    """The start-up check's cost with ``n`` documents (rows and blobs) and nothing wrong."""
    settings = get_settings(data_dir=work / "scale")
    db = Database(settings)
    db.migrate()
    store = BlobStore(settings.blob_dir)
    with db.session() as s:
        cid = catalog.create_collection(s, "scale").id
        rows = []
        for i in range(n):
            data = f"Document {i}: the travel per diem is {i} euros.".encode()
            digest = hashlib.sha256(data).hexdigest()
            store.put(digest, data)
            rows.append(dict(id=f"{i:032x}", collection_id=cid, filename=f"d{i}.txt", media_type="text/plain",
                             content_hash=digest, size_bytes=len(data), status=DocumentStatus.trained))  # fmt: skip
        s.execute(insert(Document), rows)
    report, seconds = _timed(doctor.check, db, settings)
    assert not report.findings
    return {"scale_documents": n, "scale_check_seconds": seconds}


def run(out: Path, base: str, database_url: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="memo-data-safety-"))
    try:
        src = get_settings(data_dir=work / "src")
        src_db = Database(src)
        src_db.migrate()
        cid = sample_collection(src_db, src, base)
        archive = work / "sample.tar.gz"
        summary, export_s = _timed(backup.export_collection, src_db, src, "sample", archive)
        dst = get_settings(data_dir=work / "dst", database_url=database_url)
        dst_db = Database(dst)
        dst_db.migrate()
        (new_id, _), import_s = _timed(backup.import_collection, dst_db, dst, archive, None)
        same_files = _tree(src.adapter_dir / cid) == _tree(dst.adapter_dir / new_id) and _tree(src.blob_dir) == _tree(
            dst.blob_dir
        )
        with src_db.session() as s, dst_db.session() as d:
            rows_src = {m.__tablename__: backup._rows(s, m, cid) for m in backup.TABLES}
            rows_dst = {m.__tablename__: backup._rows(d, m, new_id) for m in backup.TABLES}
        text = json.dumps(rows_dst, sort_keys=True).replace(str(dst.adapter_dir), str(src.adapter_dir))
        same_rows = json.loads(text) == rows_src

        # a crash-broken data directory: every kind of leftover doctor knows, aged past its grace period
        store = BlobStore(dst.blob_dir)
        store.put("ab" * 32, b"orphan blob")
        _age(store.path("ab" * 32))
        orphan_dir = dst.adapter_dir / new_id / ("f" * 32)
        shutil.copytree(dst.adapter_dir / new_id / rows_dst["memory_versions"][0]["id"], orphan_dir)
        partial = dst.adapter_dir / new_id / ("e" * 32 + ".partial")
        partial.mkdir()
        tmp = dst.blob_dir / "ab" / ".half.tmp"
        tmp.write_bytes(b"half")
        for p in (orphan_dir, partial, tmp):
            _age(p)
        lost = rows_dst["documents"][0]["content_hash"]
        store.delete(lost)  # a parsed document's file: reported, not repairable
        with dst_db.session() as s:  # an upload whose file was lost before its parse: it and its job fail
            up = catalog.add_document(s, dst, new_id, "late.txt", b"A late upload about travel.")
        store.delete(up.document.content_hash)
        report, check_s = _timed(doctor.check, dst_db, dst)
        repaired, repair_s = _timed(lambda: doctor.check(dst_db, dst, repair=True))
        after = doctor.check(dst_db, dst)
        scale = _check_at_scale(work, SCALE_DOCUMENTS)
        figures = {
            "collection": {t: len(r) for t, r in rows_src.items() if t != "collections"},
            "archive_bytes": archive.stat().st_size,
            "files_bytes": sum(
                p.stat().st_size for d in (src.blob_dir, src.adapter_dir) for p in d.rglob("*") if p.is_file()
            ),
            "export_seconds": export_s,
            "import_seconds": import_s,
            "import_database": "postgresql" if database_url else "sqlite",
            "round_trip_rows_equal": same_rows,
            "round_trip_files_equal": same_files,
            "export_summary": summary,
            "doctor": {
                "found": report.summary(),
                "kinds": sorted({f.kind for f in report.findings}),
                "check_seconds": check_s,
                "repaired": repaired.summary(),
                "repair_seconds": repair_s,
                "left_after_repair": [f"{f.kind}: {f.detail}" for f in after.findings],
                **scale,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"data_safety_{figures['import_database']}.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("results/reliability"))
    parser.add_argument("--database-url", default=None, help="import into this database (default: a SQLite file)")
    parser.add_argument("--base", default=str(get_settings().default_model_dir), help="the prepared SmolLM2 directory")
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.base, args.database_url), indent=2))


if __name__ == "__main__":
    main()
