"""The gateway's Prometheus metrics: HTTP requests by route template, method and status, their latency, and the jobs
by state (read from the database at scrape time). All in the process's default registry, with memo.metrics and the
client library's process and platform collectors."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from memo.db import Database, Job, JobState

# requests no route matched (a scan of random paths) share one label value, so they cannot grow the series count
UNMATCHED_ROUTE = "<unmatched>"

HTTP_REQUESTS = Counter(
    "memo_http_requests_total", "HTTP requests, by route template, method and status.", ["route", "method", "status"]
)
HTTP_SECONDS = Histogram(
    "memo_http_request_seconds",
    "Wall time of an HTTP request until its last body byte, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RATE_LIMITED = Counter(
    "memo_rate_limited_total", "Requests refused with 429 for exceeding a caller's budget, by kind.", ["kind"]
)
JOBS = Gauge("memo_jobs", "Jobs in the database, by state (counted at scrape time).", ["state"])


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_SECONDS.labels(route, method).observe(seconds)


def count_jobs(db: Database) -> None:
    """Sets :data:`JOBS` from the database (every state, 0 where there is none)."""
    with db.session() as s:
        counts = {state: n for state, n in s.execute(select(Job.state, func.count(Job.id)).group_by(Job.state))}
    for state in JobState:
        JOBS.labels(state.value).set(counts.get(state, 0))


def exposition() -> bytes:
    return generate_latest(REGISTRY)
