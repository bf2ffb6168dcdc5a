"""The gateway's Prometheus metrics: HTTP requests by route template, method and status, their latency, the jobs by
stage and state (read from the database at scrape time) and the broker's queue depths. All in the process's default
registry, with memo.metrics and the client library's process and platform collectors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import RedisError
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
JOBS = Gauge("memo_jobs", "Jobs in the database, by stage and state (counted at scrape time).", ["stage", "state"])
QUEUE_DEPTH = Gauge(
    "memo_queue_depth",
    "Stage tasks waiting in the broker, by Celery queue (a Redis broker; read at scrape time).",
    ["queue"],
)
# kombu's Redis transport keeps a queue's priority levels in lists of its own: "<queue>", "<queue>\x06\x16<level>"
_PRIORITY_SUFFIXES = ("", *(f"\x06\x16{level}" for level in (3, 6, 9)))


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_SECONDS.labels(route, method).observe(seconds)


def count_jobs(db: Database) -> None:
    """Sets :data:`JOBS` from the database: every stage and state a job is in (a pair no job is in has no series)."""
    with db.session() as s:
        counts = s.execute(select(Job.stage, Job.state, func.count(Job.id)).group_by(Job.stage, Job.state)).all()
    JOBS.clear()
    for stage, state, n in counts:
        JOBS.labels(stage, JobState(state).value).set(n)


async def count_queued(broker_url: str, queues: Iterable[str], timeout_s: float) -> None:
    """Sets :data:`QUEUE_DEPTH` from a Redis broker's lists (left unset when the broker is not Redis or does not
    answer within ``timeout_s``: a scrape never waits on it for longer)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return
    client = aioredis.from_url(broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for q in queues:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(q + suffix)
            lengths = await asyncio.wait_for(pipe.execute(), timeout_s)
    except (TimeoutError, RedisError, OSError):
        return
    finally:
        await client.aclose()
    for i, q in enumerate(queues):
        QUEUE_DEPTH.labels(q).set(sum(lengths[i * len(_PRIORITY_SUFFIXES) : (i + 1) * len(_PRIORITY_SUFFIXES)]))


def exposition() -> bytes:
    return generate_latest(REGISTRY)
