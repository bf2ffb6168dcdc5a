"""Load on the real gateway with the Memory model on a real vLLM CPU server (issue 32, "Load").

Set-up, the honest way: a vLLM CPU server (``deploy/vllm/serve.sh``, LoRA on), a fresh PostgreSQL database (or a
SQLite file), a gateway process (``memo serve``, uvicorn) whose Generator, Memory and Executive are that server
(``smollm2``), an admin key (``memo keys create``), the sample corpus uploaded over REST and learned by a short
training (``MEMO_TRAIN__MAX_STEPS``): its adapter is hot-loaded into vLLM and serves every query. Then:

1. **Query load**: a closed-loop asyncio client (``benchmarks.gateway_overhead.load``) at 1, 8 and 32 clients for N
   seconds each, over real questions about the documents: queries/s, p50/p99, errors (any non-200 or failure).
2. **The parallel memory step**: K = 1, 2, 4, 8 sub-questions answered by the Memory at once, through the
   protocol's own function (``memo.executive.protocol.ask_memory_all``, what ``answer`` runs after the plan), on the
   same vLLM server, adapter, source index and in-process scorer as the gateway; also without the scorer (vLLM
   alone) to tell where the time goes. The parent question is the same for every K, so each sub-question is rated
   against the same candidates whatever K is.
3. **Uploads during the load**: 8 clients, first with no uploads, then while handbook documents are uploaded to a
   second collection and processed (reflect on vLLM, train, publish) by the gateway's in-process pipeline (no
   broker: the default deployment, and the worst case for the gateway, whose process does the training).

    .venv/bin/python -m benchmarks.load                      # full run (46 min on a starved machine); --json: figures
    .venv/bin/python -m benchmarks.load --quick              # a smoke run (~6 min)
    .venv/bin/python -m benchmarks.load --vllm-url http://127.0.0.1:8011/v1   # a vLLM server already running
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gateway_overhead import Record, load, percentile, wait_ready
from benchmarks.infra import free_port, fresh_database

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("MEMO_LOAD_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# real questions about samples/corpus: samples/questions.txt and the corpus's other facts
EXTRA_QUESTIONS = [
    "Who founded Zorblax?",
    "In what year was Zorblax founded?",
    "How many unused leave days can Zorblax employees carry over?",
    "How long is parental leave at Zorblax?",
    "When does Zorblax close its offices for the Ember Festival?",
    "Through which portal must Zorblax employees book flights?",
    "When does the Zorblax travel policy allow business class?",
    "How much does Zorblax reimburse for meals while travelling?",
]
# words a user might put around a question: every query of the run is worded differently, so each is a question the
# gateway has not rated yet (it remembers ratings per question and memory version: a repeated question is ~free)
OPENINGS = ["", "Quick question: ", "Could you tell me: ", "I need to know: ", "Please answer: ", "For a colleague: ",
            "From the handbook: ", "One more thing: ", "Remind me: ", "Hello! "]  # fmt: skip
CLOSINGS = ["", " Thanks.", " Thank you!", " Please be brief.", " Just the answer, please.", " Many thanks.",
            " Cheers.", " Asking for the team.", " Briefly, please.", " Thanks in advance."]  # fmt: skip


def worded(questions: list[str], n: int) -> str:
    """The ``n``-th query of a run: the questions in turn, each round in other words (distinct for the first
    len(questions) x 100 queries)."""
    q, k = questions[n % len(questions)], n // len(questions)
    return f"{OPENINGS[k % len(OPENINGS)]}{q}{CLOSINGS[(k // len(OPENINGS)) % len(CLOSINGS)]}"


# the documents uploaded during the load: handbook_dev's, none of whose bytes the query collection holds
HANDBOOK = REPO.parent / "shared" / "data" / "handbook_dev" / "documents.jsonl"
CLIENT_TIMEOUT_S = 600.0  # the gateway's own deadline (MEMO_QUERY_TIMEOUT_S, 120 s) answers 504 first


Sample = tuple[float, float, int]  # a query's end (perf_counter), its seconds, its status (0: no response)


# -- pure figures (tests/benchmarks/test_load.py) ---------------------------------------------------------------------
def summarise(latencies: list[float], errors: int, wall: float) -> dict[str, Any]:
    """Queries, errors, queries/s and latency percentiles (seconds) of one measured run."""
    out: dict[str, Any] = {"queries": len(latencies), "errors": errors, "wall_s": round(wall, 2)}
    out["qps"] = round(len(latencies) / wall, 3) if wall > 0 else 0.0
    for name, q in (("p50_s", 0.5), ("p99_s", 0.99)):
        out[name] = round(percentile(latencies, q), 3) if latencies else None
    out["mean_s"] = round(statistics.fmean(latencies), 3) if latencies else None
    out["max_s"] = round(max(latencies), 3) if latencies else None
    return out


def ratios(times: dict[int, list[float]]) -> dict[int, float]:
    """Median time of each K over the median time of the smallest K."""
    base = statistics.median(times[min(times)])
    return {k: round(statistics.median(v) / base, 3) for k, v in sorted(times.items())}


def split_by_window(samples: list[Sample], start: float, end: float) -> tuple[list[Sample], list[Sample]]:
    """The (end time, seconds, status) samples whose query ended before ``start``, and those that ended within
    [``start``, ``end``]."""
    before = [x for x in samples if x[0] < start]
    within = [x for x in samples if start <= x[0] <= end]
    return before, within


def recorder(into: list[Sample]) -> Record:
    return lambda end, seconds, status: into.append((end, seconds, status))


def summarise_samples(samples: list[Sample], wall: float) -> dict[str, Any]:
    ok = [s for _, s, status in samples if status == 200]
    out = summarise(ok, len(samples) - len(ok), wall)
    out["statuses"] = dict(Counter(str(status) for _, _, status in samples if status != 200))
    return out


# -- processes ----------------------------------------------------------------------------------------------------
def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, group: bool = False) -> None:
    """Stops a process this script started (its own process group when ``group``), killing it after 30 s (the
    gateway waits for its in-process job to end)."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(10)


def start_vllm(venv: Path, model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """deploy/vllm/serve.sh in a process group of its own; its OpenMP threads on both cores unless told."""
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["bash", str(REPO / "deploy/vllm/serve.sh"), str(venv), str(model), str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def memo_cli(env: dict[str, str], *args: str) -> str:
    """A ``memo`` command in this environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"memo {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_jobs(client: httpx.Client, job_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """Polls the jobs until each has succeeded or failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
        except httpx.TimeoutException:  # a gateway training in its own process can be slow to answer: ask again
            continue
        if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs not done after {timeout_s} s: {[(j['state'], j['stage']) for j in jobs]}")
        time.sleep(1)


def upload(client: httpx.Client, collection_id: str, files: list[tuple[str, bytes]]) -> list[str]:
    """One multipart request with every file; the ids of the jobs it made."""
    parts = [("file", (name, data, "text/markdown" if name.endswith(".md") else "text/plain")) for name, data in files]
    r = client.post(f"/v1/collections/{collection_id}/documents", files=parts)
    if r.status_code not in (200, 202):
        raise SystemExit(f"upload refused: {r.status_code} {r.text[:300]}")
    return [u["job"]["id"] for u in r.json()["uploads"] if u["job"]]


def handbook_files(n: int, max_words: int) -> list[tuple[str, bytes]]:
    """The first ``n`` handbook_dev documents as Markdown files, each cut to its paragraphs within ``max_words``."""
    files = []
    for line in HANDBOOK.read_text().splitlines()[:n]:
        doc = json.loads(line)
        kept: list[str] = []
        for para in doc["text"].split("\n\n"):
            if kept and sum(len(p.split()) for p in [*kept, para]) > max_words:
                break
            kept.append(para)
        files.append((f"{doc['doc_id']}.md", "\n\n".join(kept).encode()))
    return files


def machine() -> dict[str, Any]:
    cpu = next(
        (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x), "?"
    )
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}


# -- the measurements ---------------------------------------------------------------------------------------------
def query_levels(
    gw_url: str, headers: dict[str, str], body: Any, levels: list[int], seconds: float
) -> list[dict[str, Any]]:
    """Each level for ``seconds`` (the clients start together; a query in flight at the end is waited for)."""
    rows = []
    for clients in levels:
        samples: list[Sample] = []
        load_before = os.getloadavg()[0]
        _, _, wall = asyncio.run(
            load(gw_url, headers, body, clients, seconds, timeout_s=CLIENT_TIMEOUT_S, record=recorder(samples))
        )
        row = {"clients": clients, **summarise_samples(samples, wall), "loadavg_1m": [load_before, os.getloadavg()[0]]}
        rows.append(row)
        print(f"  {clients} clients: {row}", flush=True)
    return rows


def forget_asked(scorer: Any, questions: list[str]) -> None:
    """Drops the scorer's remembered ratings of answers as replies to ``questions`` (a timed run rates them as a
    new question would) and keeps those of reflections as replies to their own questions (remembered by a serving
    gateway after the first queries that offered them)."""
    from memo.memory import memory_messages

    model = scorer.model
    asked = {str(model.tokenizer.apply_chat_template(memory_messages(q), tokenize=False, add_generation_prompt=True))
             for q in questions}  # fmt: skip
    with model._gen_lock:
        model._rated = {k: v for k, v in model._rated.items() if k[1] not in asked}


async def memory_step(
    env: dict[str, str], collection_id: str, questions: list[str], ks: list[int], repeats: int
) -> dict[str, Any]:
    """Times :func:`memo.executive.protocol.ask_memory_all` with K sub-questions, with the gateway's scorer and
    without it, repeats interleaved across K (so a burst of other work on the machine spreads over every K); and each
    of the largest K's sub-questions alone, the cost of one sub-question that K = 1 stands for."""
    os.environ.update(env)
    from memo.db import Database
    from memo.executive.protocol import ask_memory_all
    from memo.llm import Engines
    from memo.serving.publish import active_version
    from memo.settings import get_settings
    from memo.sources import load_index

    settings = get_settings()
    db = Database(settings)
    engines = Engines(settings)
    with db.session() as s:
        version = active_version(s, collection_id)
        assert version is not None and version.adapter_path
        sources = load_index(s, collection_id)
        version_id, adapter = version.id, version.adapter_path
    memory = engines.memory(version_id, adapter)
    scorer = engines.scorer(version_id, adapter)
    subs = questions[: max(ks)]
    parent = " ".join(subs)  # the same parent for every K: each sub-question offered the same facts
    out: dict[str, Any] = {"scorer": scorer is not None, "parent_question": parent}

    async def timed(qs: list[str], rater: Any) -> tuple[float, list[Any]]:
        if rater is not None:
            forget_asked(rater, qs)
        start = time.perf_counter()
        steps = await ask_memory_all(memory, sources, qs, parent, rater)
        return time.perf_counter() - start, steps

    try:
        for variant, rater in (("with_scorer", scorer), ("vllm_only", None)):
            times: dict[int, list[float]] = {k: [] for k in ks}
            alone: dict[str, list[float]] = {q: [] for q in subs}
            offered: dict[int, list[int]] = {}
            chosen: dict[str, bool] = {}
            await ask_memory_all(memory, sources, subs, parent, rater)  # warm-up: loads, own-question ratings
            for _ in range(repeats):
                for k in ks:
                    seconds, steps = await timed(subs[:k], rater)
                    times[k].append(seconds)
                    offered[k] = [s.chosen_from for s in steps]
                for q in subs:
                    seconds, [step] = await timed([q], rater)
                    alone[q].append(seconds)
                    chosen[q] = step.chosen  # the reflection the Memory chose, else its own (generated) answer
            alone_median = [statistics.median(v) for v in alone.values()]
            top = statistics.median(times[max(ks)])
            out[variant] = {
                "times_s": {str(k): [round(t, 3) for t in v] for k, v in times.items()},
                "median_s": {str(k): round(statistics.median(v), 3) for k, v in times.items()},
                "ratio": {str(k): r for k, r in ratios(times).items()},
                "alone_median_s": {q: round(t, 3) for q, t in zip(subs, alone_median, strict=True)},
                "chosen_alone": chosen,
                "ratio_to_mean_alone": round(top / statistics.mean(alone_median), 3),
                "ratio_to_slowest_alone": round(top / max(alone_median), 3),
                "offered_per_sub_question": {str(k): v for k, v in offered.items()},
            }
            v = out[variant]
            print(f"  {variant}: {v['median_s']} ratio {v['ratio']}, K={max(ks)} to the mean alone "
                  f"{v['ratio_to_mean_alone']}, to the slowest {v['ratio_to_slowest_alone']}", flush=True)  # fmt: skip
    finally:
        await engines.aclose()
        db.dispose()
    return out


async def uploads_during_load(
    gw_url: str,
    headers: dict[str, str],
    body: Any,
    clients: int,
    before_s: float,
    max_s: float,
    files: list[tuple[str, bytes]],
) -> dict[str, Any]:
    """One continuous load of ``clients``: ``before_s`` seconds with no uploads, then ``files`` uploaded to a new
    collection; the load stops when their jobs are done (or after ``max_s`` more seconds). The queries that ended
    before the upload are the baseline, those that ended while a job was queued or running are the figure."""
    samples: list[Sample] = []
    until = asyncio.Event()
    stages: list[tuple[float, str]] = []  # when each job stage was first seen
    marks: dict[str, float] = {}

    async def uploader() -> list[dict[str, Any]]:
        await asyncio.sleep(before_s)
        async with httpx.AsyncClient(base_url=gw_url, headers=headers, timeout=120) as c:
            coll = (await c.post("/v1/collections", json={"name": f"uploads-{uuid.uuid4().hex[:6]}"})).json()
            marks["upload"] = time.perf_counter()
            parts = [("file", (n, d, "text/markdown")) for n, d in files]
            r = await c.post(f"/v1/collections/{coll['id']}/documents", files=parts)
            if r.status_code != 202:
                raise SystemExit(f"upload refused: {r.status_code} {r.text[:300]}")
            job_ids = [u["job"]["id"] for u in r.json()["uploads"]]
            seen = ""
            deadline = time.perf_counter() + max_s
            while True:
                jobs = [(await c.get(f"/v1/jobs/{j}")).json() for j in job_ids]
                now = "; ".join(f"{j['stage']}:{j['state']}" for j in jobs)
                if now != seen:
                    stages.append((time.perf_counter(), now))
                    seen = now
                finished = all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs)
                if finished or time.perf_counter() > deadline:
                    marks["done"] = time.perf_counter()
                    until.set()
                    return jobs
                await asyncio.sleep(1)

    began = time.perf_counter()
    (_, _, wall), jobs = await asyncio.gather(
        load(gw_url, headers, body, clients, before_s + max_s + 60, timeout_s=CLIENT_TIMEOUT_S,
             record=recorder(samples), until=until),
        uploader(),
    )  # fmt: skip
    before, within = split_by_window(samples, marks["upload"], marks["done"])
    base = summarise_samples(before, marks["upload"] - began)
    during = summarise_samples(within, marks["done"] - marks["upload"])
    # the time line, relative to the upload: which stage the jobs were in
    timeline = [(round(t - marks["upload"], 1), s) for t, s in stages]
    return {
        "clients": clients,
        "documents": [n for n, _ in files],
        "words": [len(d.split()) for _, d in files],
        "before": base,
        "during": during,
        "p99_ratio": round(during["p99_s"] / base["p99_s"], 3) if during["p99_s"] and base["p99_s"] else None,
        "p50_ratio": round(during["p50_s"] / base["p50_s"], 3) if during["p50_s"] and base["p50_s"] else None,
        "jobs": [{k: j[k] for k in ("state", "stage", "error")} | {"stats": j.get("stats")} for j in jobs],  # fmt: skip
        "jobs_finished": all(j["state"] == "succeeded" for j in jobs),
        "processing_s": round(marks["done"] - marks["upload"], 1),
        "timeline": timeline,
        "wall_s": round(wall, 1),
    }


def question_mix(client: httpx.Client, collection_id: str, questions: list[str]) -> list[dict[str, Any]]:
    """Each question once, alone: its answer, whether it was abstained on and the questions put to the Memory (1:
    the Memory's answer, no Executive call; more: the Executive planned)."""
    out = []
    for q in questions:
        start = time.perf_counter()
        r = client.post("/v1/query", json={"collection_id": collection_id, "question": q})
        took = time.perf_counter() - start
        if r.status_code != 200:
            out.append({"question": q, "status": r.status_code, "seconds": round(took, 2)})
            continue
        b = r.json()
        out.append({
            "question": q, "answer": b["answer"][:120], "abstained": b["abstained"],
            "memory_questions": len(b["trace"]), "seconds": round(took, 2),
        })  # fmt: skip
    return out


# -- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: short levels, fewer repeats, one upload")
    ap.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per level")
    ap.add_argument("--ks", default="1,2,4,8", help="sub-questions of the parallel memory step")
    ap.add_argument("--k-repeats", type=int, default=3, help="timed runs per K (after a warm-up)")
    ap.add_argument("--upload-clients", type=int, default=8)
    ap.add_argument("--upload-before", type=float, default=60.0, help="seconds of load before the upload (baseline)")
    ap.add_argument("--upload-max", type=float, default=300.0, help="longest load after the upload, seconds")
    ap.add_argument("--upload-docs", type=int, default=1, help="handbook_dev documents uploaded during the load")
    ap.add_argument("--upload-words", type=int, default=120, help="each cut to its paragraphs within this many words")
    ap.add_argument("--train-steps", type=int, default=4, help="MEMO_TRAIN__MAX_STEPS of every training")
    ap.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--vllm-url", help="an OpenAI-compatible vLLM server already running (its /v1 URL)")
    ap.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    ap.add_argument("--model", type=Path, default=REPO / ".memo/models/SmolLM2-135M-Instruct")
    ap.add_argument("--generator-priority", type=int, default=1,
                    help="MEMO_GENERATOR__PRIORITY: 1 = queries first on vLLM, 0 = in turn")  # fmt: skip
    ap.add_argument("--generator-concurrency", type=int, default=32, help="MEMO_GENERATOR__MAX_CONCURRENCY")
    ap.add_argument("--skip", default="", help="parts to skip, comma-separated: levels, kstep, uploads")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    # a clean stop on SIGINT or SIGTERM (also when started in the background, where SIGINT is ignored): the exit stack
    # below stops the gateway and the vLLM server and drops the database
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.levels, args.seconds, args.ks, args.k_repeats = "1,8", 15.0, "1,8", 2
        args.upload_before, args.upload_max, args.upload_docs, args.upload_words = 20.0, 90.0, 1, 60
    levels = [int(x) for x in args.levels.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    model = args.model.resolve()
    questions = [q for q in (REPO / "samples/questions.txt").read_text().splitlines() if q.strip()] + EXTRA_QUESTIONS
    if max(ks) > len(questions):
        raise SystemExit(f"at most {len(questions)} sub-questions")

    work = Path(tempfile.mkdtemp(prefix="memo-load-"))
    result: dict[str, Any] = {"command": " ".join(["python -m benchmarks.load", *sys.argv[1:]]), "machine": machine()}
    began = time.perf_counter()
    # undone in reverse order, on success or failure: the gateway stops before its database is dropped, the vLLM
    # server after it, the work directory last
    with contextlib.ExitStack() as stack:
        if os.environ.get("MEMO_LOAD_KEEP"):
            stack.callback(print, f"kept {work}")
        else:
            stack.callback(shutil.rmtree, work, True)
        vllm_url = args.vllm_url
        if vllm_url is None:
            port = free_port()
            vllm = start_vllm(args.vllm_venv, model, port, work / "vllm.log")
            stack.callback(stop_process, vllm, signal.SIGTERM, True)
            print(f"vLLM on :{port} (log {work / 'vllm.log'})", flush=True)
            wait_ready(f"http://127.0.0.1:{port}/health", vllm, "vLLM", timeout_s=600)
            vllm_url = f"http://127.0.0.1:{port}/v1"
        db_url = (
            stack.enter_context(fresh_database(PG_ADMIN_URL, "memo_load")) if args.database == "postgresql" else None
        )
        env = {
            "MEMO_DATA_DIR": str(work / "data"),
            "MEMO_MEMORY_TRAIN_BASE": str(model),  # trained here, served by vLLM, rated here (the scorer)
            "MEMO_TRAIN__MAX_STEPS": str(args.train_steps),  # a real adapter, not a good one: time
            "MEMO_TRAIN__BATCH_SIZE": "2",
            "MEMO_TRAIN__MIN_STEPS": "0",
            "MEMO_REFLECT__DIRECT_VARIANTS": "1",  # a third of the reflect stage's calls: time
            "MEMO_TRAIN__TARGET_KNOWN": "0",
            "MEMO_GATE__ENABLED": "false",  # a few steps' adapter is served whatever its recall
            # 32: the reflect stage's advice (README, results/reflect); fewer leaves the server's batch to the queries
            "MEMO_GENERATOR__MAX_CONCURRENCY": str(args.generator_concurrency),
            "MEMO_GENERATOR__PRIORITY": str(args.generator_priority),
            "MEMO_RATE_LIMIT__QUERY_PER_MINUTE": "1000000",  # every query from one key: no budget in the way
            "MEMO_RATE_LIMIT__WRITE_PER_MINUTE": "1000000",
        }
        if db_url:
            env["MEMO_DATABASE_URL"] = db_url
        for role in ("GENERATOR", "MEMORY", "EXECUTIVE"):
            env |= {f"MEMO_{role}__BACKEND": "openai", f"MEMO_{role}__BASE_URL": vllm_url,
                    f"MEMO_{role}__MODEL": "smollm2", f"MEMO_{role}__TIMEOUT_S": "1800"}  # fmt: skip
        result["settings"] = {k: v for k, v in env.items() if "DATABASE" not in k and "DATA_DIR" not in k}
        result["database"] = args.database
        memo_cli(env, "db", "upgrade")
        secret = memo_cli(env, "keys", "create", "--name", "load", "--role", "admin").strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {secret}"}
        gw_port = free_port()
        gw_url = f"http://127.0.0.1:{gw_port}"
        with open(work / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", "--port", str(gw_port)],
                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        stack.callback(stop_process, gateway)
        wait_ready(f"{gw_url}/healthz", gateway, "the gateway")

        # the query collection: the sample corpus over REST, learned by a real (short) training
        t0 = time.perf_counter()
        with httpx.Client(base_url=gw_url, headers=headers, timeout=120) as client:
            coll = client.post("/v1/collections", json={"name": "load"}).json()
            # the sample corpus as one document: a job per file would train three times (each retrains on
            # every document), minutes each on this shared 2-core machine
            corpus = [p.read_text().strip() for p in sorted((REPO / "samples/corpus").iterdir())]
            files = [("zorblax-handbook.md", "\n\n".join(corpus).encode() + b"\n")]
            jobs = wait_jobs(client, upload(client, coll["id"], files), timeout_s=1800)
            if any(j["state"] != "succeeded" for j in jobs):
                raise SystemExit(f"ingest failed: {[(j['stage'], j['error']) for j in jobs]}")
            result["ingest"] = {
                "documents": [n for n, _ in files], "seconds": round(time.perf_counter() - t0, 1),
                "stats": [j["stats"] for j in jobs],
            }  # fmt: skip
            print(f"collection ready in {result['ingest']['seconds']} s", flush=True)
            # five of the questions alone, one at a time: their path, and the warm-up of every level (the
            # adapter loaded into vLLM, the scorer's model in the gateway)
            result["question_mix"] = question_mix(client, coll["id"], questions[:5])
            for row in result["question_mix"]:
                print(f"  {row}", flush=True)

        def save() -> None:  # after every part: a run stopped later keeps the figures it has
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=1) + "\n")

        sent = itertools.count()  # over every part of the run: no wording is asked twice

        def body(_: int) -> dict[str, Any]:
            return {"collection_id": coll["id"], "question": worded(questions, next(sent))}

        if "levels" not in skip:
            print(f"query load, {args.seconds:g} s per level", flush=True)
            result["levels"] = query_levels(gw_url, headers, body, levels, args.seconds)
            save()
        if "kstep" not in skip:
            print(f"parallel memory step, K = {ks}, {args.k_repeats} repeats", flush=True)
            result["memory_step"] = asyncio.run(memory_step(env, coll["id"], questions, ks, args.k_repeats))
            save()
        if "uploads" not in skip:
            files = handbook_files(args.upload_docs, args.upload_words)
            print(f"uploads during the load: {[n for n, _ in files]}", flush=True)
            result["uploads"] = asyncio.run(
                uploads_during_load(
                    gw_url, headers, body, args.upload_clients, args.upload_before, args.upload_max, files
                )
            )
            print(f"  {result['uploads']}", flush=True)
            save()
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["wall_s"] = round(time.perf_counter() - began, 1)
        save()
    print_tables(result)


def print_tables(r: dict[str, Any]) -> None:
    """The figures as Markdown tables (results/reliability/load.md)."""
    ms = lambda v: "-" if v is None else f"{v * 1e3:.0f}"  # noqa: E731
    if "levels" in r:
        print("\n| clients | queries | errors | queries/s | p50 ms | p99 ms | max ms | load avg (1 min) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---|")
        for x in r["levels"]:
            la = "-".join(f"{v:.1f}" for v in x["loadavg_1m"])
            print(f"| {x['clients']} | {x['queries']} | {x['errors']} | {x['qps']:.2f} | {ms(x['p50_s'])} "
                  f"| {ms(x['p99_s'])} | {ms(x['max_s'])} | {la} |")  # fmt: skip
    if "memory_step" in r:
        m = r["memory_step"]
        print("\n| K | step, median ms | x K=1 | vLLM alone (no scorer), median ms | x K=1 |")
        print("|---:|---:|---:|---:|---:|")
        w, v = m["with_scorer"], m["vllm_only"]
        for k in v["median_s"]:
            print(
                f"| {k} | {ms(w['median_s'][k])} | {w['ratio'][k]:.2f} | {ms(v['median_s'][k])} | {v['ratio'][k]:.2f} |"
            )
        for name, x in (("step", w), ("vLLM alone", v)):
            print(f"{name}: K={k} / the mean of its sub-questions alone {x['ratio_to_mean_alone']}, "
                  f"/ the slowest alone {x['ratio_to_slowest_alone']}")  # fmt: skip
    if "uploads" in r:
        u = r["uploads"]
        print(f"\n| {u['clients']} clients | queries | errors | queries/s | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in ("before", "during"):
            x = u[name]
            print(f"| {name} | {x['queries']} | {x['errors']} | {x['qps']:.2f} | {ms(x['p50_s'])} | {ms(x['p99_s'])} "
                  f"| {ms(x['max_s'])} |")  # fmt: skip
        print(f"p99 during / before: {u['p99_ratio']}")


if __name__ == "__main__":
    main()
