"""Services restarted under work (issue 32): Redis with a job running and one queued, PostgreSQL under queries and
uploads, the vLLM server under a query stream. Each scenario runs the real parts (a Celery worker process, a
gateway served by uvicorn, private Redis / PostgreSQL / vLLM processes it may kill) and returns its figures:
requests ok / 503 / other / hung, time to recover after the service is back, jobs completed, row counts and what
``memo doctor``'s check finds. ``tests/e2e/test_restarts.py`` asserts on the same figures.

    python -m benchmarks.restarts --out results/reliability [--pg-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

writes ``restarts.json`` and ``restarts.md`` there. Needs the packaged model (``memo models prepare``), the vLLM
environment (``make vllm-env``), ``redis-server`` on PATH and PostgreSQL 15's binaries (run as the ``postgres`` user
when this runs as root).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import json
import os
import platform
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

from benchmarks.infra import free_port, fresh_database, wait_until
from memo import doctor, keys
from memo.db import Database, Document, Job, MemoryVersion, Reflection
from memo.jobs import jobs_in_redis_broker
from memo.llm import served_adapter_name
from memo.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path(os.environ.get("MEMO_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_ADMIN_URL = os.environ.get("MEMO_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# torch in one thread: on a 2-core machine shared with other busy processes (vLLM servers), two threads spin against
# them (a training step of the 135M model: 6-7 s with one thread, 18-38 s with two, measured at load average 11)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# deadline of what the machine's load makes slow (a process starting, a training, a first answer): generous, since a
# deadline costs nothing when it is met (on the 2 shared cores a worker took 3 minutes to start at load average 12)
LOADED_S = 900.0
# a request that takes longer has hung: above the query deadline (QUERY_TIMEOUT_S, then the gateway answers 504), so
# a slow query on the loaded machine is not abandoned by the client while the server still works on it
QUERY_TIMEOUT_S = 150.0
CLIENT_TIMEOUT_S = QUERY_TIMEOUT_S + 30
# one client asking one question after another: on 2 shared cores the vLLM server generated 1-3 tokens/s at load
# average 15, and two clients' queries (every one an Executive plan, Memory answers and a synthesis) queued behind
# each other past any deadline
QUERY_CLIENTS = 1

# one-sentence documents the packaged 135M generator writes usable questions for (tests/e2e/test_vllm_memory.py)
DOCS = {
    "hq.txt": b"Zorblax is headquartered in Varnmouth.",
    "founder.txt": b"Zorblax was founded by Mira Okafor in 1987.",
    "leave.txt": b"Every Zorblax employee receives 23 days of paid leave per year.",
    "vllm-outage.txt": b"The Zorblax IT helpdesk can be reached at extension 4417.",
}
QUESTION = "Where is Zorblax headquartered?"  # answered by the Memory's choice among the reflections: no LLM call
# about nothing the documents say: the Memory generates its own answer on its server (the adapter), then abstains
UNKNOWN = "What colour is the Zorblax logo?"


def to_env(overrides: dict[str, Any], prefix: str = "MEMO_") -> dict[str, str]:
    """Settings overrides (nested dicts) as the environment a worker process reads them from."""
    env: dict[str, str] = {}
    for k, v in overrides.items():
        name = f"{prefix}{k.upper()}"
        if isinstance(v, dict):
            env.update(to_env(v, name + "__"))
        elif isinstance(v, list):
            env[name] = ",".join(map(str, v))
        else:
            env[name] = str(v).lower() if isinstance(v, bool) else str(v)
    return env


def base_overrides(model_dir: Path) -> dict[str, Any]:
    """Every role on the packaged model, a training of one step at rank 4, the gate off (one step teaches little; the
    gate is tested elsewhere), direct facts only: the jobs are short, the restarts are what is measured."""
    roles = {r: {"model": str(model_dir)} for r in ("generator", "memory", "executive")}
    return {
        **roles,
        "memory_train_base": str(model_dir),
        "train": {"max_steps": 1, "batch_size": 2, "rank": 4, "alpha": 8},
        "gate": {"enabled": False},
        "reflect": {"stages": ["direct"]},
        "max_sub_questions": 2,
        # the query stream repeats one question, answered in milliseconds once its ratings are remembered: the rate
        # limit is not what is tested here
        "rate_limit": {"query_per_minute": 1_000_000, "write_per_minute": 1_000_000},
    }


# -- private services ---------------------------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this run's own on a free port, no persistence unless ``appendonly``: killing it loses every
    message, as a restarted Redis without persistence does."""

    def __init__(self, folder: Path, appendonly: bool = False) -> None:
        self.folder, self.appendonly, self.port = folder, appendonly, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.folder),
        ]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until("private redis answers", self.alive, 30, 0.05)

    def alive(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash, nothing written."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class PrivatePostgres:
    """A PostgreSQL cluster of this run's own (initdb in a temporary folder, trust auth, a free port), run as the
    ``postgres`` user when this process is root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="memo-restarts-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])

    def _run(self, args: list[str]) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "start"]
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: every session is ended and its transaction rolled back, as a restart does."""
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateVLLM:
    """A vLLM CPU server (deploy/vllm/serve.sh) of this run's own on the packaged model, LoRA enabled: started without
    waiting (:meth:`launch`), so that its start-up overlaps other work, killed and started again on the same port."""

    def __init__(self, model_dir: Path, folder: Path) -> None:
        self.model_dir, self.folder, self.port = model_dir, folder, free_port()
        self.venv = Path(os.environ.get("MEMO_VLLM_VENV", REPO / ".venv-vllm"))
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self) -> None:
        if not (self.venv / "bin" / "python").exists():
            raise RuntimeError(f"no vLLM environment at {self.venv}: run `make vllm-env`")
        with open(self.folder / "vllm.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", str(REPO / "deploy/vllm/serve.sh"), str(self.venv), str(self.model_dir), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 600) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited: {(self.folder / 'vllm.log').read_text()[-3000:]}")
            return self.healthy()

        wait_until("vLLM ready", ready, timeout_s, 1.0)

    def served(self) -> set[str]:
        return {m["id"] for m in httpx.get(f"{self.url}/models", timeout=10).json()["data"]}

    def kill(self) -> None:
        """SIGKILL of the whole process group: the server and its engine die at once, every adapter is forgotten."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


class GatedLLM:
    """An OpenAI-compatible generator that the scenario can hold: while :attr:`gate` is clear every completion waits,
    so a job is certainly running (in its reflect stage) when the broker is restarted. It writes the question a
    stated fact answers (``DOCS``' sentences), else a generic one. Not the service under test: the job queue is."""

    ANSWERS = {
        "Zorblax is headquartered in Varnmouth.": "Where is Zorblax headquartered?",
        "Zorblax was founded by Mira Okafor in 1987.": "Who founded Zorblax?",
        "Every Zorblax employee receives 23 days of paid leave per year.": "How much paid leave do Zorblax staff get?",
    }

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.waiting += 1
                outer.gate.wait(LOADED_S)  # bounded: the scenario opens it
                outer.waiting -= 1
                last = str(body.get("messages", [{}])[-1].get("content", ""))
                reply = outer.ANSWERS.get(last.strip(), "What does Zorblax state?")
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": reply}}], "usage": {}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def close(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()


class Gateway:
    """The real gateway app served by uvicorn in a thread on a free port, with an admin key."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from services.gateway.app import create_app

        db = Database(settings)
        db.migrate()
        with db.session() as s:
            _, secret = keys.create_key(s, "restarts", "admin", None)
        db.dispose()
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=free_port(), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until("the gateway started", lambda: self.server.started or not self.thread.is_alive(), LOADED_S, 0.05)
        assert self.thread.is_alive(), "the gateway did not start"
        self.url = f"http://127.0.0.1:{config.port}"

    def client(self, timeout_s: float = CLIENT_TIMEOUT_S) -> httpx.Client:
        # a new connection per request: a kept-alive one that uvicorn closes just as it is reused (its 5 s keep-alive,
        # easily passed between two polls on a loaded machine) is the client's error, not the service's
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout_s, limits=no_keepalive)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(120)


# -- the record of requests ---------------------------------------------------------------------------------------
@dataclass
class Call:
    kind: str  # query, upload, read
    started: float
    seconds: float
    status: int  # 0: no answer within the client's timeout (hung) or no connection
    retry_after: str | None
    body: str


@dataclass
class Calls:
    """Every request a scenario made, and what it got."""

    items: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client: httpx.Client, kind: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            r = client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self._add(Call(kind, started, time.monotonic() - started, 0, None, f"{type(exc).__name__}: {exc}"))
            return None
        self._add(Call(kind, started, time.monotonic() - started, r.status_code, r.headers.get("retry-after"), r.text))
        return r

    def _add(self, call: Call) -> None:
        with self.lock:
            self.items.append(call)

    def first_ok_after(self, t: float, kind: str | None = None) -> float | None:
        """When the first request started after ``t`` (of ``kind``) that succeeded ended."""
        ends = [
            c.started + c.seconds
            for c in list(self.items)
            if c.started >= t and 200 <= c.status < 300 and kind in (None, c.kind)
        ]
        return min(ends) if ends else None

    def unavailable_since(self, t: float) -> int:
        return sum(1 for c in list(self.items) if c.started >= t and c.status == 503)

    def figures(self) -> dict[str, Any]:
        items = list(self.items)
        ok = [c for c in items if 200 <= c.status < 300]
        clean = [c for c in items if c.status == 503 and c.retry_after and _has_detail(c.body)]
        other = [c for c in items if c not in ok and c not in clean]
        return {
            "requests": len(items),
            "ok": len(ok),
            "unavailable_503": len(clean),
            "other": len(other),
            "other_examples": [f"{c.kind} {c.status}: {c.body[:200]}" for c in other[:5]],
            "max_seconds": round(max((c.seconds for c in items), default=0.0), 2),
            "by_kind": {k: sum(1 for c in items if c.kind == k) for k in sorted({c.kind for c in items})},
        }


def _has_detail(body: str) -> bool:
    try:
        return isinstance(json.loads(body).get("detail"), str)
    except (ValueError, AttributeError):
        return False


class QueryStream:
    """``clients`` threads asking ``QUESTION`` and ``UNKNOWN`` in turn until stopped (each request bounded by the
    client's timeout, the stream by ``max_seconds``). After a 503 a client waits as ``Retry-After`` says, at most
    ``max_wait_s`` (so the time to recover is measured to within that)."""

    def __init__(
        self, gateway: Gateway, calls: Calls, collection_id: str, clients: int = 2, max_seconds: float = 3600
    ) -> None:
        self.gateway, self.calls, self.collection_id = gateway, calls, collection_id
        self.max_wait_s, self.deadline = 1.0, time.monotonic() + max_seconds
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with self.gateway.client() as client:
            for n in itertools.count():
                if self.stop_event.is_set() or time.monotonic() >= self.deadline:
                    break
                body = {"collection_id": self.collection_id, "question": (QUESTION, UNKNOWN)[n % 2]}
                r = self.calls.send(client, "query", "POST", "/v1/query", json=body)
                if r is None or r.status_code == 503:
                    wait = float(r.headers.get("retry-after", 1)) if r is not None else 1.0
                    self.stop_event.wait(min(wait, self.max_wait_s))

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S + 10)


# -- the state of the data ----------------------------------------------------------------------------------------
def data_state(settings: Settings) -> dict[str, Any]:
    """Jobs by state, documents, reflections (and duplicates: the same question and answer twice for a document),
    versions, and what ``memo doctor``'s check finds (no grace: every file is settled once every job ended)."""
    db = Database(settings)
    try:
        with db.session() as s:
            jobs = {str(state.value): n for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state))}
            per_doc = dict(
                s.execute(select(Reflection.document_id, func.count()).group_by(Reflection.document_id)).all()
            )
            distinct = s.execute(
                select(func.count()).select_from(
                    select(Reflection.document_id, Reflection.question, Reflection.answer).distinct().subquery()
                )
            ).scalar_one()
            state = {
                "jobs": jobs,
                "requeues": int(s.scalar(select(func.coalesce(func.sum(Job.requeues), 0))) or 0),
                "documents": s.scalar(select(func.count()).select_from(Document)),
                "reflections": sum(per_doc.values()),
                "documents_with_reflections": len(per_doc),
                "duplicate_reflections": sum(per_doc.values()) - distinct,
                "versions": s.scalar(select(func.count()).select_from(MemoryVersion)),
            }
        report = doctor.check(db, settings, grace_s=0)
        state["doctor_findings"] = [f"{f.kind} {f.target}" for f in report.findings]
    finally:
        db.dispose()
    return state


def job_states(client: httpx.Client, job_ids: list[str]) -> dict[str, str]:
    out = {}
    for job_id in job_ids:
        r = client.get(f"/v1/jobs/{job_id}")
        out[job_id] = r.json()["state"] if r.status_code == 200 else f"http {r.status_code}"
    return out


def wait_jobs_done(client: httpx.Client, job_ids: list[str], timeout_s: float) -> dict[str, str]:
    """Every job's state once none is queued or running (a deadline, not a sleep)."""

    def done() -> dict[str, str] | None:
        states = job_states(client, job_ids)
        return states if all(s not in ("queued", "running") for s in states.values()) else None

    try:
        return wait_until(f"jobs {job_ids} finished", done, timeout_s, 0.5)
    except AssertionError as exc:  # name where each job stands, so that a run that times out says why
        rows = [client.get(f"/v1/jobs/{job_id}").text[:1500] for job_id in job_ids]
        raise AssertionError(f"{exc}; the jobs: {rows}") from None


def _upload(calls: Calls, client: httpx.Client, cid: str, name: str) -> str | None:
    """Uploads ``name`` of ``DOCS``; its job id (None when the upload got no 2xx)."""
    files = {"file": (name, DOCS[name], "text/plain")}
    r = calls.send(client, "upload", "POST", f"/v1/collections/{cid}/documents", files=files)
    if r is None or r.status_code not in (200, 202):
        return None
    job = r.json()["uploads"][0]["job"]
    return job["id"] if job else None


def _job_ids(settings: Settings) -> list[str]:
    db = Database(settings)
    try:
        with db.session() as s:
            return list(s.scalars(select(Job.id)))
    finally:
        db.dispose()


# -- scenario 1: Redis ------------------------------------------------------------------------------------------
def redis_restart(
    model_dir: Path, database_url: str, work: Path, appendonly: bool = False, timeout_s: float = LOADED_S
) -> dict[str, Any]:
    """A real Celery worker process on a private Redis and ``database_url``: one job running (held in its reflect
    stage by the generator), one queued in the broker; Redis is killed (an upload meanwhile) and started again, the
    generator released. Without persistence (``appendonly`` False) it comes back empty. Every job must still end,
    without a second job per document."""
    redis = PrivateRedis(work / "redis", appendonly)
    redis.start()
    generator = GatedLLM()
    overrides = {
        **base_overrides(model_dir),
        "database_url": database_url,
        "broker_url": redis.url,
        "generator": {"backend": "openai", "base_url": generator.url, "model": "generator"},
        # quick liveness so the scenario is short: beats every second, a job unheard of for 8 s is stale, checks
        # every second (the defaults are 30 s, 300 s and 60 s)
        "jobs": {"heartbeat_s": 1, "stale_after_s": 8, "check_every_s": 1},
    }
    settings = get_settings(data_dir=work / "data", **overrides)
    Database(settings).migrate()
    env = {**os.environ, **to_env(overrides), "MEMO_DATA_DIR": str(settings.data_dir), **ONE_THREAD}
    with open(work / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    gateway: Gateway | None = None
    calls = Calls()
    persistence = "appendonly yes (fsync every second)" if appendonly else "none (--save '' --appendonly no)"
    fig: dict[str, Any] = {"service": "redis", "persistence": persistence}
    try:  # the worker, the generator and Redis are stopped whatever fails from here
        wait_until("the worker ready", lambda: b"ready." in (work / "worker.log").read_bytes(), LOADED_S, 0.5)
        gateway = Gateway(settings)
        with gateway.client() as client:
            cid = client.post("/v1/collections", json={"name": "restarts-redis"}).json()["id"]
            generator.gate.clear()  # every completion waits: the first job stays in its reflect stage
            running = _upload(calls, client, cid, "hq.txt")
            assert running is not None, calls.figures()
            wait_until(
                "the first job running in reflect, its generator call held",
                lambda: client.get(f"/v1/jobs/{running}").json()["stage"] == "reflect" and generator.waiting > 0,
                LOADED_S,
            )
            queued = _upload(calls, client, cid, "founder.txt")
            assert queued is not None, calls.figures()
            wait_until("the second job's message in Redis", lambda: jobs_in_redis_broker(redis.url, {queued}), 30)
            fig["before"] = {"running": client.get(f"/v1/jobs/{running}").json()["state"]}
            fig["before"]["queued"] = client.get(f"/v1/jobs/{queued}").json()["state"]

            down = time.monotonic()
            redis.kill()
            during = _upload(calls, client, cid, "leave.txt")  # the broker is down: 503, the job is kept
            calls.send(client, "read", "GET", f"/v1/jobs/{running}")
            fig["readyz_while_down"] = client.get("/readyz").status_code
            redis.start()  # without persistence, empty: every message it held is gone
            back = time.monotonic()
            generator.gate.set()

            job_ids = _job_ids(settings)
            states = wait_jobs_done(client, job_ids, timeout_s)
            done = time.monotonic()
            again = _upload(calls, client, cid, "leave.txt")  # the client retries: the document is there already
            fig.update(
                {
                    "jobs": len(job_ids),
                    "jobs_succeeded": sum(1 for s in states.values() if s == "succeeded"),
                    "job_states": sorted(states.values()),
                    "upload_while_down_made_job": during is not None,
                    "upload_retry_made_job": again is not None,
                    "outage_seconds": round(back - down, 2),
                    "seconds_to_all_jobs_done_after_back": round(done - back, 1),
                    "worker_alive": worker.poll() is None,
                }
            )
    finally:
        generator.close()
        if gateway is not None:
            gateway.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        redis.kill()
    fig["calls"] = calls.figures()
    fig["data"] = data_state(settings)
    fig["worker_log_tail"] = (work / "worker.log").read_text(errors="replace")[-2000:]
    return fig


# -- scenarios 2 and 3: PostgreSQL and vLLM, on one stack ---------------------------------------------------------
@dataclass
class Stack:
    """A private PostgreSQL cluster and vLLM server, a gateway running jobs in-process on them (every LLM role on
    vLLM, training on this CPU), and a collection that has learned one document."""

    pg: PrivatePostgres
    vllm: PrivateVLLM
    settings: Settings
    gateway: Gateway
    collection_id: str
    setup_seconds: float


@contextlib.contextmanager
def stack(model_dir: Path, work: Path, vllm: PrivateVLLM | None = None) -> Iterator[Stack]:
    """``vllm``: one already launched (its start-up overlapping other work), else one is launched here."""
    import torch

    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the gateway trains in this process (ONE_THREAD)
    pg = PrivatePostgres()
    vllm = vllm or PrivateVLLM(model_dir, work / "vllm")
    if vllm.proc is None:
        vllm.launch()
    gateway = None
    try:
        pg.start()
        on_vllm = {"backend": "openai", "base_url": vllm.url, "model": "smollm2"}
        overrides = {
            **base_overrides(model_dir),
            "database_url": pg.create_database("memo"),
            **{role: on_vllm for role in ("generator", "memory", "executive")},
            "jobs": {"heartbeat_s": 1, "stale_after_s": 8, "check_every_s": 1},
            "query_timeout_s": QUERY_TIMEOUT_S,
        }
        settings = get_settings(data_dir=work / "data", **overrides)
        gateway = Gateway(settings)
        vllm.wait_ready()
        with gateway.client() as client:
            cid = client.post("/v1/collections", json={"name": "restarts"}).json()["id"]
            job = _upload(Calls(), client, cid, "hq.txt")
            assert job is not None
            state = wait_jobs_done(client, [job], LOADED_S)
            assert state[job] == "succeeded", client.get(f"/v1/jobs/{job}").json()
        yield Stack(pg, vllm, settings, gateway, cid, round(time.monotonic() - started, 1))
    finally:
        if gateway is not None:
            gateway.close()
        vllm.stop()
        pg.close()
        torch.set_num_threads(threads)


@contextlib.contextmanager
def retried_stages() -> Iterator[list[str]]:
    """The messages of the stages that met a transient error and were left to a retry (memo.pipeline.run_stage's
    warning) while the block runs, in this process (the in-process gateway's jobs)."""
    import logging

    seen: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "transient error" in record.msg:
                seen.append(record.getMessage()[:300])

    handler, logger = Handler(logging.WARNING), logging.getLogger("memo.pipeline")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def postgres_restart(st: Stack, timeout_s: float = LOADED_S) -> dict[str, Any]:
    """A query stream and uploads against the gateway; PostgreSQL is restarted (``pg_ctl stop -m fast``
    then start: every session ended) while an upload's job runs, and a second upload follows at once. Then an outage
    with no job running: stopped until the clients have seen it (a 503), started again."""
    calls = Calls()
    fig: dict[str, Any] = {"service": "postgresql"}
    stream = QueryStream(st.gateway, calls, st.collection_id, clients=QUERY_CLIENTS)
    try:
        with st.gateway.client() as client:
            wait_until("a first answered query", lambda: calls.first_ok_after(0.0, "query"), LOADED_S)
            first = _upload(calls, client, st.collection_id, "founder.txt")
            assert first is not None, calls.figures()
            wait_until(
                "the upload's job running",
                lambda: client.get(f"/v1/jobs/{first}").json()["stage"] in ("reflect", "train"),
                LOADED_S,
            )
            with retried_stages() as retried:
                t0 = time.monotonic()
                st.pg.stop("fast")
                st.pg.start()
                fig["restart_seconds"] = round(time.monotonic() - t0, 2)
                _upload(calls, client, st.collection_id, "leave.txt")
                job_ids = _job_ids(st.settings)
                states = wait_jobs_done(client, job_ids, timeout_s)
            fig["after_restart_first_ok_s"] = _since(calls.first_ok_after(t0, "query"), t0)
            # a stage whose statement the restart cut is run again after a backoff (memo.pipeline.transient): no job
            # fails, and nobody has to retry one
            fig["stages_retried"] = retried

            # an outage: the database stays down until a client has been told so, then comes back
            down = time.monotonic()
            st.pg.stop("fast")
            wait_until("a 503 while the database is down", lambda: calls.unavailable_since(down), 60)
            read = calls.send(client, "read", "GET", f"/v1/collections/{st.collection_id}/jobs")
            st.pg.start()
            back = time.monotonic()
            wait_until(
                "a query answered after the database is back", lambda: calls.first_ok_after(back, "query"), LOADED_S
            )
            fig.update(
                {
                    "outage_seconds": round(back - down, 2),
                    "read_while_down": read.status_code if read is not None else 0,
                    "seconds_to_first_ok_after_back": _since(calls.first_ok_after(back, "query"), back),
                    "jobs": len(job_ids),
                    "jobs_succeeded": sum(1 for s in states.values() if s == "succeeded"),
                    "job_states": sorted(states.values()),
                }
            )
    finally:
        stream.stop()
    fig["calls"] = calls.figures()
    fig["data"] = data_state(st.settings)
    return fig


def vllm_restart(st: Stack, timeout_s: float = LOADED_S) -> dict[str, Any]:
    """A query stream against the gateway while the vLLM server that hosts every role, and the
    collection's adapter, is killed and started again on the same port: queries answer 503 while it is away and 200
    once it is back, the adapter loaded again by the first query that needs it."""
    calls = Calls()
    fig: dict[str, Any] = {"service": "vllm"}
    with st.gateway.client() as client:
        version = next(v for v in client.get(f"/v1/collections/{st.collection_id}/versions").json() if v["active"])
    adapter = served_adapter_name(version["id"])
    fig["adapter_served_before"] = adapter in st.vllm.served()
    stream = QueryStream(st.gateway, calls, st.collection_id, clients=QUERY_CLIENTS)
    try:
        with retried_stages() as retried, st.gateway.client() as client:
            wait_until("a first answered query", lambda: calls.first_ok_after(0.0, "query"), LOADED_S)
            # an upload whose in-process job reflects on the server about to go: its stage waits for it, and retries
            job_id = _upload(calls, client, st.collection_id, "vllm-outage.txt")
            assert job_id is not None, calls.figures()
            down = time.monotonic()
            st.vllm.kill()
            st.vllm.launch()  # same port; it forgets every adapter
            wait_until("a 503 while vLLM is away", lambda: calls.unavailable_since(down), 60)
            st.vllm.wait_ready(timeout_s)
            back = time.monotonic()
            wait_until("a query answered after vLLM is back", lambda: calls.first_ok_after(back, "query"), LOADED_S)
            fig.update(
                {
                    "outage_seconds": round(back - down, 1),
                    "seconds_to_first_ok_after_back": _since(calls.first_ok_after(back, "query"), back),
                    "adapter_served_after": adapter in st.vllm.served(),
                    "upload_job": wait_jobs_done(client, [job_id], timeout_s)[job_id],
                }
            )
        fig["stages_retried"] = retried
    finally:
        stream.stop()
    fig["calls"] = calls.figures()
    fig["data"] = data_state(st.settings)
    return fig


def _since(t: float | None, t0: float) -> float | None:
    return round(t - t0, 2) if t is not None else None


# -- the benchmark ------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Services restarted under work (issue 32)",
        "",
        f"Run of {results['date']} on {results['machine']}. Commands: "
        + ", ".join(
            f"`{c}`" for c in dict.fromkeys(sc.get("command", results["command"]) for sc in results["scenarios"])
        )
        + " (`--only` runs some scenarios and keeps the others' figures; without it, all). The same scenarios are "
        "`tests/e2e/test_restarts.py`.",
        "",
        "| service | what | requests | ok | 503 + Retry-After | other | slowest (s) | outage (s) "
        "| first ok after back (s) | jobs succeeded |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    what = {
        "redis": "killed with a job running and one queued, started again",
        "postgresql": "restarted (fast) under queries and an upload's job; then down until a client saw it",
        "vllm": "killed under a query stream and an upload's job (every role and the adapter on it), started again",
    }
    for sc in results["scenarios"]:
        c = sc["calls"]
        back = sc.get("seconds_to_first_ok_after_back", sc.get("seconds_to_all_jobs_done_after_back"))
        jobs = f"{sc['data']['jobs'].get('succeeded', 0)} / {sum(sc['data']['jobs'].values())}"
        kind = sc["service"] + (f" ({sc['persistence']})" if "persistence" in sc else "")
        lines.append(
            f"| {kind} | {what[sc['service']]} | {c['requests']} | {c['ok']} | {c['unavailable_503']} "
            f"| {c['other']} | {c['max_seconds']} | {sc.get('outage_seconds')} | {back} | {jobs} |"
        )
    lines += ["", "Per scenario (rows, requeues, `memo doctor` findings):", ""]
    for sc in results["scenarios"]:
        d = sc["data"]
        lines.append(
            f"- **{sc['service']}** {sc.get('persistence', '')}: documents {d['documents']}, "
            f"reflections {d['reflections']} "
            f"(duplicates {d['duplicate_reflections']}), versions {d['versions']}, requeues {d['requeues']}, "
            f"doctor findings {len(d['doctor_findings'])}"
            + (
                f", stages retried after a transient error {len(sc['stages_retried'])}"
                if "stages_retried" in sc
                else ""
            )
            + (f"; {k}: {sc[k]}" if (k := "seconds_to_all_jobs_done_after_back") in sc else "")
        )
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """## How to read it

- **Columns.** *requests*: every request the scenario's clients made (a query stream of two clients, uploads, job
  reads); *ok* 2xx; *503 + Retry-After*: a 503 with a `Retry-After` header and a JSON `detail`; *other*: any other
  status or no answer within the client's 60 s timeout (a hang). *first ok after back*: seconds from the service
  accepting again to the first successful query (Redis: to every job finished). A client waits as `Retry-After` says
  (at most 1 s here) before asking again. *jobs succeeded*: the jobs of the scenario's database once it ended (the
  vLLM scenario runs on the PostgreSQL scenario's database and makes none of its own).
- **Redis.** A real Celery worker process (solo pool) on a private Redis; the first job is held in its reflect stage
  (its generator, an OpenAI-compatible stub that the scenario holds: the job queue is under test, not the LLM), the
  second waits in the broker; Redis is SIGKILLed, an upload is sent meanwhile, Redis starts again. Without
  persistence its queue is empty: the queued job's message is gone. Before this work nothing requeued such a job (the
  stale-job check skips a job with no heartbeat, which is what a job waiting in the broker has): it waited for ever;
  now every stale-job check (gateway and
  workers, every `MEMO_JOBS__CHECK_EVERY_S`) also looks for each waiting job's message in the broker's lists and its
  unacked hash, and requeues one missing on two checks in a row (`memo/jobs.py`, `recover_lost_jobs`). The upload
  made during the outage is stored and answered 503 (its job could not be sent); the same check sends it once the
  broker is back, and the client's retry finds the document (no second job). The running job finishes its stage;
  Celery's consumer reconnects by itself. With `appendonly yes` the queued message survives and nothing needs
  requeueing but the upload made during the outage. `docker-compose.yml` now runs Redis with `appendonly yes`.
- **PostgreSQL.** A private cluster, the gateway running jobs in-process on it, every LLM role on a private vLLM
  server. `pg_ctl stop -m fast` ends every session (the transaction in flight is rolled back) and the cluster starts
  again at once, while an upload's job runs and queries stream; a new connection refused is tried again for 5 s
  (`memo/db/session.py`), so a restart of a second or two is waited out. A statement in flight when the sessions are
  ended fails: the stage that met it is left `queued` with the reason and run again after a backoff
  (`memo.pipeline.transient`, `MEMO_JOBS__RETRIES`), resuming its units (*stages retried* in restarts.json, with the
  error); no job fails and no client retries one. It is a race: not every run cuts a statement. Then an outage
  longer than that wait: the clients get 503 (`services/gateway/errors.py`: database, broker and unreachable-LLM
  errors, in routes and in the key lookup before them) until it is back; `pool_pre_ping` replaces the dead pooled
  connections.
- **vLLM.** The server hosting the Executive, the Generator and the Memory's adapter is SIGKILLed and started again
  on the same port: queries get 503 (connection refused) until it answers, then the first query that names the
  adapter gets a 404 from the new server and loads it again (`memo/llm/openai_compat.py`); its start-up on this
  loaded machine is most of the outage. An upload sent just before the kill has its in-process job's reflect stage
  meet the outage: the stage waits (`BackendError`, retried after 2, 4, 8 ... s) and the job succeeds once the
  server is back, as a Celery worker's task does.
- **Not covered.** A stream already started (`stream: true`) cannot turn into a 503.
"""


SCENARIOS = ["redis", "postgresql", "vllm"]


def run_all(model_dir: Path, admin_url: str, work: Path, out: Path, only: set[str]) -> dict[str, Any]:
    """The scenarios named in ``only`` (redis, postgresql, vllm); each one's figures replace that scenario's in
    ``out``/restarts.json as soon as it ends, so a later failure keeps them (and a part can be run again alone)."""
    started = time.monotonic()
    path = out / "restarts.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"scenarios": []}

    command = "python -m benchmarks.restarts --out results/reliability" + (
        "" if only == set(SCENARIOS) else f" --only {','.join(s for s in SCENARIOS if s in only)}"
    )

    def record(sc: dict[str, Any]) -> None:
        sc.pop("worker_log_tail", None)
        sc["command"] = command
        key = (sc["service"], sc.get("persistence"))
        results["scenarios"] = [s for s in results["scenarios"] if (s["service"], s.get("persistence")) != key]
        results["scenarios"].append(sc)
        results["scenarios"].sort(key=lambda s: SCENARIOS.index(s["service"]))
        load = os.getloadavg()
        results.update(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, shared: load average "
                f"{load[2]:.1f} over the last 15 minutes",
                "command": command,
                "seconds": time.monotonic() - started,
            }
        )
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        (out / "restarts.md").write_text(markdown(results))

    vllm = PrivateVLLM(model_dir, work / "vllm")
    if only & {"postgresql", "vllm"}:
        vllm.launch()  # its start-up overlaps the Redis scenarios
    try:
        if "redis" in only:
            for appendonly in (False, True):
                with fresh_database(admin_url, "memo_restarts") as url:
                    record(redis_restart(model_dir, url, work / f"redis-{appendonly}", appendonly))
        if only & {"postgresql", "vllm"}:
            with stack(model_dir, work / "stack", vllm) as st:
                if "postgresql" in only:
                    record(postgres_restart(st))
                if "vllm" in only:
                    record(vllm_restart(st))
    finally:
        vllm.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("results/reliability"))
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--model-dir", type=Path, default=REPO / ".memo" / "models" / "SmolLM2-135M-Instruct")
    parser.add_argument("--only", default="redis,postgresql,vllm", help="comma-separated scenarios to run")
    parser.add_argument("--render", action="store_true", help="only write restarts.md again from restarts.json")
    args = parser.parse_args()
    if args.render:
        results = json.loads((args.out / "restarts.json").read_text())
        (args.out / "restarts.md").write_text(markdown(results))
    else:
        with tempfile.TemporaryDirectory(prefix="memo-restarts-") as tmp:
            results = run_all(args.model_dir, args.pg_admin_url, Path(tmp), args.out, set(args.only.split(",")))
    print(markdown(results))


if __name__ == "__main__":
    main()
