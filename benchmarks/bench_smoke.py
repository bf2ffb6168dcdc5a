"""Smoke benchmark: wall time of each stage of the whole loop on the sample corpus, in a fresh data directory.

Run: ``make bench-smoke`` (or ``python -m benchmarks.bench_smoke [--out bench-out/smoke.json]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

from memo.batch import find_documents, ingest_files
from memo.db import Database, Job
from memo.llm import Engines
from memo.query import ask
from memo.settings import LLMRole, get_settings

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=REPO / "samples/corpus")
    parser.add_argument("--questions", type=Path, default=REPO / "samples/questions.txt")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out/smoke.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = get_settings()
    model = base.model_path(base.memory)
    with tempfile.TemporaryDirectory() as tmp:
        settings = get_settings(
            data_dir=Path(tmp), **{r: LLMRole(model=model) for r in ("generator", "memory", "executive")}
        )
        t0 = time.perf_counter()
        db = Database(settings)
        db.migrate()
        seconds = {"migrate": time.perf_counter() - t0}
        done = ingest_files(db, settings, "smoke", find_documents([args.corpus], settings.max_unpacked_bytes))
        jobs, coll_id = done.job_ids, done.collection_id
        seconds.update(done.seconds)
        with db.session() as s:
            stats = s.get(Job, jobs[-1]).stats  # type: ignore[union-attr]
            pairs = sum(s.get(Job, j).stats.get("reflect", {}).get("document_pairs", 0) for j in jobs)  # type: ignore[union-attr]
        questions = [q.strip() for q in args.questions.read_text().splitlines() if q.strip()]

        async def run_queries() -> list[float]:
            engines = Engines(settings)
            out = []
            try:
                for q in questions:
                    start = time.perf_counter()
                    await ask(db, engines, coll_id, q)
                    out.append(time.perf_counter() - start)
            finally:
                await engines.aclose()
            return out

        per_query = asyncio.run(run_queries())
    report = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "model": model,
        "documents": len(jobs),
        "reflections": pairs,
        "train": stats.get("train", {}),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "query_seconds_mean": round(sum(per_query) / len(per_query), 2),
        "query_seconds_each": [round(x, 2) for x in per_query],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'stage':<10} {'seconds':>8}")
    for k, v in report["seconds"].items():
        print(f"{k:<10} {v:>8.2f}")
    print(f"{'query':<10} {report['query_seconds_mean']:>8.2f}  (mean of {len(per_query)})")
    print(f"reflections: {pairs}; train: {report['train']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
