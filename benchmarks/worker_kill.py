"""Workers killed mid-job (issue 32, results/reliability/worker_kill.md): real Celery worker processes on a Redis
broker and PostgreSQL, the Generator on a real OpenAI-compatible server (vLLM) behind a counting proxy per worker.

Two documents are uploaded. Worker 1 is SIGKILLed while it reflects the first; worker 2 finds the job left behind
(the heartbeat check), requeues it and is SIGKILLed in the middle of a training, after a checkpoint; worker 3
finishes. The figures: jobs lost, duplicate reflections, the generator calls of each worker against what the units
it finished needed, and the step the training resumed from.

    python -m benchmarks.worker_kill --database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB \\
        --broker-url redis://127.0.0.1:6379/14 --generator-url http://127.0.0.1:8000/v1 --out results/reliability

The database and the Redis database are wiped first: give it empty ones.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select

from benchmarks.infra import wait_until
from memo import catalog
from memo.db import (
    Chunk,
    Database,
    Document,
    DocumentStatus,
    Job,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectUnit,
    VersionStatus,
)
from memo.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TERMINAL = (JobState.succeeded, JobState.failed, JobState.cancelled)

# two invented documents of several chunks each (40-word chunks), so that a kill lands between units
DOCUMENTS = {
    "travel.md": (
        "# Travel policy of Quillborne Ltd\n\n"
        "Employees of Quillborne book rail travel through the Ferrow desk at extension 5120. Second-class tickets "
        "are the rule for journeys under four hours; first class needs the approval of a director. Hotel nights are "
        "capped at 140 euros in Varnmouth and 110 euros elsewhere. Taxis are refunded only between 22:00 and 06:00 "
        "or when carrying equipment heavier than 15 kilograms. The mileage rate for private cars on company "
        "business is 0.31 euros per kilometre, paid monthly with the salary. Meals on a travel day are covered up "
        "to 38 euros, receipts attached. Claims older than 60 days are refused by the finance team. Travel to "
        "Osterlund needs a security briefing from the Brannick office two weeks before departure. Frequent flyer "
        "points earned on company trips belong to the employee. Lost luggage is reported to the Ferrow desk within "
        "24 hours, and the travel insurer Calloway Mutual pays up to 900 euros per bag."
    ),
    "helpdesk.md": (
        "# IT helpdesk of Quillborne Ltd\n\n"
        "The IT helpdesk of Quillborne answers at extension 4417 from 07:30 to 19:00 on working days. Outside "
        "those hours the on-call engineer is paged through the Tessaly system. A forgotten password is reset by "
        "the self-service portal after two security questions. Laptops are replaced every 42 months, monitors "
        "every 6 years. Software requests go through the Ambrel catalogue and are approved by the team lead within "
        "3 working days. A lost badge costs the employee 25 euros and is replaced at the Varnmouth reception. "
        "Printers on the third floor are serviced by Delmar Office on Tuesdays. The guest wifi network is called "
        "QB-Visit and its password changes every Monday."
    ),
}


class CountingProxy:
    """An HTTP server in a thread that forwards ``POST /v1/chat/completions`` (and ``GET /v1/models``) to a real
    OpenAI-compatible server and counts the completions it forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls = 0
        self._lock = threading.Lock()
        client = httpx.Client(timeout=600)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self, response: httpx.Response) -> None:
                self.send_response(response.status_code)
                self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def do_GET(self) -> None:
                self._relay(client.get(outer.upstream + self.path.removeprefix("/v1")))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/chat/completions":
                    with outer._lock:
                        outer.calls += 1
                headers = {"Content-Type": "application/json"}
                try:
                    self._relay(
                        client.post(outer.upstream + self.path.removeprefix("/v1"), content=body, headers=headers)
                    )
                except (httpx.HTTPError, OSError):  # the worker that asked was killed, or the server went away
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def worker_env(data_dir: Path, database_url: str, broker_url: str, generator_url: str, model: str) -> dict[str, str]:
    """The settings of every process of the scenario, as ``MEMO_*`` variables (the workers read them)."""
    return {
        "MEMO_DATA_DIR": str(data_dir),
        "MEMO_DATABASE_URL": database_url,
        "MEMO_BROKER_URL": broker_url,
        "MEMO_GENERATOR__BACKEND": "openai",
        "MEMO_GENERATOR__BASE_URL": generator_url,
        "MEMO_GENERATOR__MODEL": "smollm2",
        "MEMO_MEMORY__MODEL": model,
        "MEMO_EXECUTIVE__MODEL": model,
        "MEMO_CHUNK__UNIT": "words",
        "MEMO_CHUNK__WORDS": "40",
        "MEMO_CHUNK__OVERLAP": "0",
        "MEMO_REFLECT__CONCURRENCY": "1",  # one unit at a time: a kill leaves finished, unfinished and unstarted units
        "MEMO_TRAIN__MAX_STEPS": "6",
        "MEMO_TRAIN__BATCH_SIZE": "2",
        "MEMO_TRAIN__CHECKPOINT_EVERY": "2",
        "MEMO_TRAIN__TARGET_KNOWN": "0",
        "MEMO_TRAIN__PATIENCE": "0",
        # a 12-step training learns little: the gate records its figures but lets the version through
        "MEMO_GATE__MIN_RECALL": "0",
        "MEMO_GATE__MAX_FORGETTING": "1",
        # a dead worker's job is found within seconds (the defaults: a 30 s heartbeat, stale after 5 min)
        "MEMO_JOBS__HEARTBEAT_S": "1",
        "MEMO_JOBS__STALE_AFTER_S": "3",
        "MEMO_JOBS__CHECK_EVERY_S": "1",
    }


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Worker:
    """``memo worker`` (every queue, solo pool) in its own process group, its output in ``log``, its generator calls
    going through its own :class:`CountingProxy` to ``generator_url``: what it asked is counted exactly, whenever it
    dies."""

    def __init__(self, env: dict[str, str], generator_url: str, log: Path) -> None:
        self.log = log
        self.proxy = CountingProxy(generator_url)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "worker"],
                env={**os.environ, **env, "MEMO_GENERATOR__BASE_URL": self.proxy.url},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # no clean-up of any kind: as a machine that loses power
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proxy.close()


def alive_and(worker: Worker, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, failing at once if ``worker`` died meanwhile (its log's tail in the error)."""

    def both() -> bool:
        worker.alive()
        return check()

    return both


def _unit_calls(stats: dict[str, Any]) -> int:
    """The LLM calls a finished unit made: its generation's and its verification's."""
    return int(stats.get("calls", 0)) + int(stats.get("verify_calls", 0))


def _units(db: Database) -> dict[str, int]:
    """Finished reflect units: id -> the calls they made."""
    with db.session() as s:
        return {u.id: _unit_calls(u.stats or {}) for u in s.scalars(select(ReflectUnit))}


def _reflect_state(db: Database, job_id: str) -> tuple[str | None, int, int]:
    """A job's stage, and its document's finished reflect units and chunks."""
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.document_id is not None
        units = s.scalar(select(func.count(ReflectUnit.id)).where(ReflectUnit.document_id == job.document_id))
        chunks = s.scalar(select(func.count(Chunk.id)).where(Chunk.document_id == job.document_id))
        return job.stage, units or 0, chunks or 0


def _jobs(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job)))


def run(
    work: Path, database_url: str, broker_url: str, generator_url: str, model: str, timeout_s: float = 1800
) -> dict[str, Any]:
    """The scenario; returns its figures (raises when a step does not happen within ``timeout_s``)."""
    redis.Redis.from_url(broker_url).flushdb()
    env = worker_env(work / "data", database_url, broker_url, generator_url, model)
    with environment(env):
        settings = Settings()
    db = Database(settings)
    db.migrate()
    workers: list[Worker] = []
    started = time.monotonic()
    try:
        from services.worker.dispatch import Dispatcher

        dispatcher = Dispatcher(db, settings)
        with db.session() as s:
            collection_id = catalog.create_collection(s, "worker-kill").id
        job_ids = []
        for name, text in DOCUMENTS.items():
            with db.session() as s:
                job = catalog.add_document(s, settings, collection_id, name, text.encode()).job
                assert job is not None
                job_ids.append(job.id)
            dispatcher.submit(job_ids[-1])

        # 1. worker 1 is killed while it reflects: some of the first document's units finished, not all
        workers.append(Worker(env, generator_url, work / "worker1.log"))
        first = job_ids[0]

        def reflecting() -> bool:
            stage, units, chunks = _reflect_state(db, first)
            return stage == "reflect" and 0 < units < chunks

        wait_until("worker 1 reflects the first document", alive_and(workers[0], reflecting), timeout_s)
        workers[0].kill()
        kill1: dict[str, Any] = {"units": _units(db), "at_s": time.monotonic() - started}
        _, kill1_units_of_doc, chunks = _reflect_state(db, first)
        reflections_at_kill1 = _reflection_keys(db)

        # 2. worker 2 requeues the job left behind and is killed in a training, after a checkpoint
        workers.append(Worker(env, generator_url, work / "worker2.log"))
        adapters = settings.adapter_dir / collection_id / "checkpoints"
        trained: dict[str, Any] = {}

        def training_checkpointed() -> bool:
            # every document reflected first: the training resumed after the kill then has the same data (one that
            # another document joined since starts over, rightly: its checkpoint is for other data)
            with db.session() as s:
                statuses = set(s.scalars(select(Document.status)))
            if not statuses <= {DocumentStatus.reflected, DocumentStatus.trained}:
                return False
            for job in _jobs(db):
                if job.stage == "train" and job.state == JobState.running and job.done > 2:
                    if (adapters / job.id / "state.pt").exists():
                        trained.update(job=job.id, step=job.done)
                        return True
            return False

        wait_until("worker 2 trains past a checkpoint", alive_and(workers[1], training_checkpointed), timeout_s)
        workers[1].kill()
        kill2: dict[str, Any] = {"units": _units(db), "at_s": time.monotonic() - started}

        # 3. worker 3 finishes every job
        workers.append(Worker(env, generator_url, work / "worker3.log"))
        wait_until(
            "every job ends", alive_and(workers[2], lambda: all(j.state in TERMINAL for j in _jobs(db))), timeout_s
        )
        units = _units(db)
        calls = [w.proxy.calls for w in workers]
        figures = _figures(db, job_ids, trained["job"], calls, kill1, kill2, units)
        figures["kill_1"] = {
            "stage": "reflect",
            "units_finished_of_document": kill1_units_of_doc,
            "chunks_of_document": chunks,
            "seconds_after_start": round(kill1["at_s"], 1),
        }
        figures["kill_2"]["checkpoint_step_seen"] = trained["step"]
        figures["reflections_of_worker_1_kept"] = reflections_at_kill1 <= _reflection_keys(db)
        figures["seconds"] = round(time.monotonic() - started, 1)
        return figures
    finally:
        for w in workers:
            w.stop()
        db.dispose()


def _reflection_keys(db: Database) -> set[tuple[str, str]]:
    with db.session() as s:
        return {(r.id, r.question) for r in s.scalars(select(Reflection))}


def _figures(
    db: Database,
    job_ids: list[str],
    trained_job: str,
    calls: list[int],
    kill1: dict[str, Any],
    kill2: dict[str, Any],
    units: dict[str, int],
) -> dict[str, Any]:
    with db.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(job_ids)))}
        reflections = s.execute(select(Reflection.collection_id, Reflection.question_hash)).all()
        version = s.get(MemoryVersion, jobs[trained_job].memory_version_id)
        failed_versions = s.scalar(
            select(func.count(MemoryVersion.id)).where(MemoryVersion.status == VersionStatus.failed)
        )
        states = Counter(j.state.value for j in jobs.values())
        requeues = {j.id: j.requeues for j in jobs.values()}
        metrics = dict(version.metrics) if version is not None else {}

    def worker(calls: int, before: dict[str, int], until: dict[str, int]) -> dict[str, int]:
        """A worker's generator calls, and what the units it finished (in the database at its death or end) needed."""
        new = {u: c for u, c in until.items() if u not in before}
        return {"calls_made": calls, "calls_of_units_finished": sum(new.values()), "units_finished": len(new)}

    return {
        "jobs": len(job_ids),
        "jobs_succeeded": states.get("succeeded", 0),
        "jobs_lost": len(job_ids) - states.get("succeeded", 0),
        "requeues": requeues,
        "reflections": len(reflections),
        "duplicate_reflections": len(reflections) - len(set(reflections)),
        # worker 1 also paid for the unit it was killed in; workers 2 and 3 asked only for the units they finished
        "workers": [
            worker(calls[0], {}, kill1["units"]),
            worker(calls[1], kill1["units"], kill2["units"]),
            worker(calls[2], kill2["units"], units),
        ],
        "kill_2": {"stage": "train", "seconds_after_start": round(kill2["at_s"], 1)},
        "training": {
            "resumed_from": metrics.get("resumed_from"),
            "steps": metrics.get("steps"),
            "versions_failed": failed_versions,  # the killed attempt's version row, kept and marked
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--broker-url", required=True, help="a Redis database it may wipe")
    parser.add_argument("--generator-url", required=True, help="an OpenAI-compatible /v1 serving 'smollm2'")
    parser.add_argument("--model", default=str(REPO / ".memo/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/memo-worker-kill"))
    parser.add_argument("--out", type=Path, default=None, help="write worker_kill.json here")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    figures = run(args.work_dir, args.database_url, args.broker_url, args.generator_url, args.model)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        (args.out / "worker_kill.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
