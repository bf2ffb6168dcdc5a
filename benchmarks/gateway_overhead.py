"""The gateway's own cost per query: a real gateway process (``memo serve``, uvicorn) whose Memory and Executive are a
fake OpenAI-compatible endpoint in another process that answers at once, a collection that looks trained (documents,
chunks, reflections with provenance, an active memory version), and a load client (asyncio + httpx) keeping 1, 16 and
64 queries in flight. Per level: p50/p99 latency of ``POST /v1/query``, the same minus the fake's own time (its time
from a request read to its response written, times the calls per query), requests/s and errors.

    python -m benchmarks.gateway_overhead                       # figures to stdout (results/gateway/README.md)
    python -m benchmarks.gateway_overhead --profile prof.html   # the gateway process under pyinstrument

The question asked is one the Memory answers with a fact the reflections support: the common path (one Memory call,
no Executive call). ``--path plan`` asks one it does not know, so the Executive plans and the service abstains (three
Memory calls and one Executive call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.infra import free_port

KNOWN = "How many days of paid leave do Zorblax employees receive per year?"
UNKNOWN = "What is the Zorblax dental plan deductible?"
PLAN = json.dumps({"sub_questions": ["What dental plan does Zorblax offer?", "What is a deductible at Zorblax?"]})
CALLS = {"recall": 1, "plan": 4}  # LLM calls per query on each path


# -- the fake OpenAI-compatible endpoint (its own process) ---------------------------------------------------------
async def _serve_fake(port: int) -> None:
    """HTTP/1.1 with keep-alive on a bare asyncio server (its own cost stays far below the gateway's): POST
    /v1/chat/completions answers the Memory ("memo-*" models: the known fact, else "I don't know") and the Executive
    (a plan); GET /stats returns and resets the own time of every request since the last call."""
    own: list[float] = []

    def completion(body: dict) -> dict:
        model, messages = body.get("model", ""), body.get("messages", [])
        if model.startswith("memo-"):
            text = "23 days" if messages and messages[-1]["content"] == KNOWN else "I don't know"
        else:
            text = PLAN if "sub-questions" in messages[0]["content"] else "I don't know"
        return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                start = time.perf_counter()
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines if ":" in x)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if request_line.startswith("GET /stats"):
                    payload = json.dumps(own).encode()
                    own.clear()
                else:
                    payload = json.dumps(completion(json.loads(body))).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(payload)).encode()
                    + b"\r\n\r\n"
                    + payload
                )
                await writer.drain()
                if not request_line.startswith("GET /stats"):
                    own.append(time.perf_counter() - start)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- the trained-looking collection --------------------------------------------------------------------------------
def seed(env: dict[str, str], documents: int, chunks: int, pairs: int) -> tuple[str, str]:
    """Writes the collection as the pipeline leaves it (the training itself replaced by the version row); returns
    its id and the secret of a reader key the load client sends. One reflection states the fact the known question
    asks."""
    os.environ.update(env)
    from memo import keys
    from memo.db import Chunk, Collection, Database, Document, MemoryVersion, Reflection, ReflectionSource
    from memo.db.models import DocumentStatus, VersionStatus
    from memo.questions import question_hash
    from memo.settings import get_settings

    db = Database(get_settings())
    db.migrate()
    with db.session() as s:
        coll = Collection(name="handbook")
        s.add(coll)
        s.flush()
        doc_ids = []
        for d in range(documents):
            doc = Document(
                collection_id=coll.id, filename=f"policy-{d}.md", media_type="text/markdown",
                content_hash=f"{d:064d}", size_bytes=4000, status=DocumentStatus.trained,
            )  # fmt: skip
            s.add(doc)
            s.flush()
            doc_ids.append(doc.id)
            for c in range(chunks):
                text = f"Policy {d} section {c}. Zorblax staff in unit {d}-{c} get {c + 3} parking permits a year."
                if d == 0 and c == 0:
                    text += " Zorblax employees receive 23 days of paid leave per year."
                chunk = Chunk(document_id=doc.id, seq=c, text=text)
                s.add(chunk)
                s.flush()
                qa = [(f"How many parking permits do Zorblax staff in unit {d}-{c} get in year {p}?", f"{c + 3}")
                      for p in range(pairs)]  # fmt: skip
                if d == 0 and c == 0:
                    qa[0] = (KNOWN, "Zorblax employees receive 23 days of paid leave per year.")
                for q, a in qa:
                    r = Reflection(
                        collection_id=coll.id, document_id=doc.id, chunk_id=chunk.id, kind="direct", question=q,
                        answer=a, question_hash=question_hash(q),
                    )  # fmt: skip
                    s.add(r)
                    s.flush()
                    s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=doc.id))
        s.add(
            MemoryVersion(
                collection_id=coll.id, base_model="base", adapter_path="/served/by/the/fake", active=True,
                status=VersionStatus.ready, documents=doc_ids,
            )
        )  # fmt: skip
        _, secret = keys.create_key(s, "gateway overhead benchmark", "reader")
        return coll.id, secret


# -- the load (also benchmarks.load's client) -----------------------------------------------------------------------
Body = dict[str, Any] | Callable[[int], dict[str, Any]]
Record = Callable[[float, float, int], None]


async def load(
    url: str,
    headers: dict[str, str],
    body: Body,
    clients: int,
    seconds: float,
    *,
    timeout_s: float = 60.0,
    record: Record | None = None,
    until: asyncio.Event | None = None,
) -> tuple[list[float], int, float]:
    """``clients`` loops, each on its own keep-alive connection (an httpx client each: one pool of many connections
    costs the load client CPU per request that grows with their number, on the cores the gateway needs), each sending
    the next query when its last one is answered, for ``seconds``. ``body``: the JSON of every query, or a function of
    the query's number (0, 1, ... across all clients) that gives it. ``record``: called for every query with its end
    (``time.perf_counter()``), its seconds and its status (0: no response). ``until``: once set, the clients stop
    early (after their query in flight). Returns the latencies of the answered queries, the errors (non-200 or
    failed) and the wall time."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal errors, sent
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s) as client:
            while time.perf_counter() < stop and not (until is not None and until.is_set()):
                payload = body(sent) if callable(body) else body
                sent += 1
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/query", json=payload)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                end = time.perf_counter()
                if status == 200:
                    latencies.append(end - start)
                else:
                    errors += 1
                if record is not None:
                    record(end, end - start, status)

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{what} not up after {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,16,64", help="concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level (after a warm-up)")
    ap.add_argument("--path", choices=sorted(CALLS), default="recall")
    ap.add_argument("--documents", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=10, help="per document")
    ap.add_argument("--pairs", type=int, default=5, help="reflections per chunk")
    ap.add_argument("--profile", type=Path, help="run the gateway under pyinstrument; its HTML report goes here")
    ap.add_argument("--fake-server", type=int, help=argparse.SUPPRESS)  # the fake endpoint's own process
    args = ap.parse_args()
    if args.fake_server:
        asyncio.run(_serve_fake(args.fake_server))
        return

    work = Path(tempfile.mkdtemp(prefix="memo-gateway-bench-"))
    fake_port, gw_port = free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    # the Memory's rating of reflections (memo.llm.Engines.scorer) is model work, not the gateway's own: the data
    # directory has no model weights, so the gateway answers without it
    env = {
        "MEMO_DATA_DIR": str(work),
        "MEMO_MEMORY__BACKEND": "openai",
        "MEMO_MEMORY__BASE_URL": f"{fake_url}/v1",
        "MEMO_MEMORY__MODEL": "base",
        "MEMO_MEMORY__MAX_CONCURRENCY": "256",  # not the bound: the fake is not a GPU
        "MEMO_EXECUTIVE__BACKEND": "openai",
        "MEMO_EXECUTIVE__BASE_URL": f"{fake_url}/v1",
        "MEMO_EXECUTIVE__MODEL": "executive",
        "MEMO_EXECUTIVE__MAX_CONCURRENCY": "256",
        # the limiter runs on every query, with a budget no level reaches
        "MEMO_RATE_LIMIT__QUERY_PER_MINUTE": "100000000",
    }
    collection_id, secret = seed(env, args.documents, args.chunks, args.pairs)
    headers = {"Authorization": f"Bearer {secret}"}
    levels = [int(x) for x in args.levels.split(",")]
    gateway_cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(gw_port)]
    if args.profile:  # pyinstrument's report: HTML for a .html file, else text
        renderer = "html" if args.profile.suffix == ".html" else "text"
        gateway_cmd[1:2] = ["-m", "pyinstrument", "-r", renderer, "-o", str(args.profile), "-m"]
    procs = []
    try:
        fake = subprocess.Popen([sys.executable, "-m", "benchmarks.gateway_overhead", "--fake-server", str(fake_port)])
        procs.append(fake)
        log = open(work / "gateway.log", "wb")  # noqa: SIM115 (closed with the process)
        gateway = subprocess.Popen(
            gateway_cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(gateway)
        wait_ready(f"{fake_url}/stats", fake, "the fake endpoint")
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_ready(f"{gw_url}/healthz", gateway, "the gateway")
        body = {"collection_id": collection_id, "question": KNOWN if args.path == "recall" else UNKNOWN}
        check = httpx.post(f"{gw_url}/v1/query", json=body, headers=headers, timeout=30)
        if check.status_code != 200 or check.json()["abstained"] != (args.path == "plan"):
            raise SystemExit(f"unexpected answer: {check.status_code} {check.text[:300]}")

        calls = CALLS[args.path]
        print(f"gateway overhead, path {args.path} ({calls} LLM call(s) per query), {args.seconds:g} s per level, "
              f"{args.documents * args.chunks * args.pairs} reflections, {os.cpu_count()} CPUs")  # fmt: skip
        print(
            "| clients | queries | errors | req/s | p50 ms | p99 ms | fake p50 ms/call | overhead p50 ms "
            "| overhead p99 ms | gateway CPU ms/query |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for clients in levels:
            asyncio.run(load(gw_url, headers, body, clients, min(3.0, args.seconds)))  # warm-up: connections, caches
            httpx.get(f"{fake_url}/stats")
            cpu = cpu_seconds(gateway.pid)
            latencies, errors, wall = asyncio.run(load(gw_url, headers, body, clients, args.seconds))
            cpu = cpu_seconds(gateway.pid) - cpu
            own = httpx.get(f"{fake_url}/stats").json()
            fake_mean = statistics.fmean(own) if own else 0.0
            overhead = [x - calls * fake_mean for x in latencies]
            print(
                f"| {clients} | {len(latencies)} | {errors} | {len(latencies) / wall:.0f} "
                f"| {percentile(latencies, 0.5) * 1e3:.1f} | {percentile(latencies, 0.99) * 1e3:.1f} "
                f"| {statistics.median(own) * 1e3 if own else 0:.3f} "
                f"| {percentile(overhead, 0.5) * 1e3:.1f} | {percentile(overhead, 0.99) * 1e3:.1f} "
                f"| {cpu / max(1, len(latencies) + errors) * 1e3:.2f} |",
                flush=True,
            )
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # uvicorn and pyinstrument finish (and write the profile) on SIGINT
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
