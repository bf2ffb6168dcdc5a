"""Per-caller rate limits: the in-process counter, and the Redis one on the real Redis (db 15, a key prefix of the
test's own) shared by two gateway apps. The window's clock is the test's, so a minute boundary cannot split a test."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from memo.db import Collection, Database
from services.gateway.app import create_app
from services.gateway.ratelimit import MemoryCounter, RateLimiter, RedisCounter
from tests.conftest import REDIS_URL, make_settings
from tests.integration.test_ops import _requests, _samples

NOW = 1_000_000 * 60 + 15.5  # 15.5 s into a minute: 45 s (rounded up: 45) until the next window
KEY_A = {"Authorization": "Bearer memo_key-a"}
KEY_B = {"Authorization": "Bearer memo_key-b"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _with_keys(settings) -> None:
    """The API keys KEY_A and KEY_B (admin, every collection) in the settings' database."""
    from sqlalchemy import select

    from memo.db import ApiKey, Role
    from memo.keys import hash_secret

    db = Database(settings)
    db.migrate()
    with db.session() as s:
        for header in (KEY_A, KEY_B):
            secret = header["Authorization"].removeprefix("Bearer ")
            if s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))) is None:
                s.add(ApiKey(name=secret, prefix=secret[:12], key_hash=hash_secret(secret), role=Role.admin))
    db.dispose()


def _app(settings, counter, clock: Clock) -> TestClient:
    """A gateway whose limiter counts in ``counter`` on ``clock`` (set after start-up, as the app made its own)."""
    _with_keys(settings)
    client = TestClient(create_app(settings))
    client.__enter__()
    client.app.state.limiter = RateLimiter(settings.rate_limit, counter, clock)
    return client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def local(tmp_path, clock) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, rate_limit={"query_per_minute": 2, "write_per_minute": 3})
    client = _app(settings, MemoryCounter(), clock)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def _collections(client: TestClient) -> int:
    with client.app.state.db.session() as s:
        return s.scalar(select(func.count(Collection.id)))


def test_writes_over_the_budget_get_429_with_retry_after_and_change_nothing(local):
    for i in range(3):
        assert local.post("/v1/collections", json={"name": f"c{i}"}, headers=KEY_A).status_code == 201
    r = local.post("/v1/collections", json={"name": "c3"}, headers=KEY_A)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "45"
    assert r.json() == {"detail": "rate limit exceeded: 3 write requests per minute for this caller; retry in 45 s"}
    assert r.headers["x-request-id"]  # answered inside the request middleware
    assert _collections(local) == 3
    # reads, the query budget and the operability routes are not spent by writes
    for _ in range(10):
        assert local.get("/v1/collections", headers=KEY_A).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert all(local.get(path, headers=KEY_A).status_code == 200 for _ in range(5))
    body = {"collection_id": "missing", "question": "Hi?"}
    assert local.post("/v1/query", json=body, headers=KEY_A).status_code == 404


def test_each_key_and_each_address_has_its_own_budget_per_window(local, clock):
    body = {"collection_id": "missing", "question": "Hi?"}
    assert [local.post("/v1/query", json=body, headers=KEY_A).status_code for _ in range(3)] == [404, 404, 429]
    assert [local.post("/v1/query", json=body, headers=KEY_B).status_code for _ in range(3)] == [404, 404, 429]
    # without a key: counted by address (401: no key; limited before authentication, so a flood of bad keys is too)
    assert [local.post("/v1/query", json=body).status_code for _ in range(3)] == [401, 401, 429]
    clock.now += 44.0
    r = local.post("/v1/query", json=body, headers=KEY_A)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    clock.now += 1.0  # the next minute: a new budget
    assert local.post("/v1/query", json=body, headers=KEY_A).status_code == 404


def test_refused_requests_are_counted_by_kind(local):
    before = _samples(local)
    for _ in range(4):
        local.delete("/v1/collections/c/documents/d", headers=KEY_A)
    after = _samples(local)
    route = "/v1/collections/{collection_id}/documents/{document_id}"
    assert _requests(after, route, "DELETE", 404) - _requests(before, route, "DELETE", 404) == 3
    assert _requests(after, "<unmatched>", "DELETE", 429) - _requests(before, "<unmatched>", "DELETE", 429) == 1
    refused = ("memo_rate_limited_total", frozenset({"kind": "write"}.items()))
    assert after[refused] - before.get(refused, 0.0) == 1


def test_zero_turns_a_budget_off(tmp_path, clock):
    settings = make_settings(tmp_path, rate_limit={"query_per_minute": 1, "write_per_minute": 0})
    client = _app(settings, MemoryCounter(), clock)
    try:
        names = [f"c{i}" for i in range(20)]
        assert all(client.post("/v1/collections", json={"name": n}, headers=KEY_A).status_code == 201 for n in names)
        body = {"collection_id": "missing", "question": "Hi?"}
        assert [client.post("/v1/query", json=body, headers=KEY_A).status_code for _ in range(2)] == [404, 429]
    finally:
        client.__exit__(None, None, None)


# -- shared through Redis ------------------------------------------------------------------------------------------
@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"memo-test:{uuid.uuid4().hex}"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{prefix}:*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.mark.redis
def test_two_gateways_share_one_budget_through_redis(tmp_path, clock, prefix):
    limits = {"query_per_minute": 5, "write_per_minute": 3, "key_prefix": prefix}
    settings = make_settings(tmp_path, broker_url=REDIS_URL, rate_limit=limits)
    one = _app(settings, RedisCounter(REDIS_URL), clock)
    two = _app(settings, RedisCounter(REDIS_URL), clock)
    try:
        assert one.post("/v1/collections", json={"name": "a"}, headers=KEY_A).status_code == 201
        assert two.post("/v1/collections", json={"name": "b"}, headers=KEY_A).status_code == 201
        assert one.post("/v1/collections", json={"name": "c"}, headers=KEY_A).status_code == 201
        r = two.post("/v1/collections", json={"name": "d"}, headers=KEY_A)
        assert r.status_code == 429 and r.headers["retry-after"] == "45"
        assert two.post("/v1/collections", json={"name": "e"}, headers=KEY_B).status_code == 201  # another key
    finally:
        one.__exit__(None, None, None)
        two.__exit__(None, None, None)
    # one counter per caller and window, keyed by the sha256 of the token, expiring after the window
    r = redis.Redis.from_url(REDIS_URL)
    window = int(NOW // 60)
    key = f"{prefix}:write:key:{hashlib.sha256(b'memo_key-a').hexdigest()}:{window}"
    assert int(r.get(key)) == 4
    assert 60 < r.ttl(key) <= 120
    r.close()


@pytest.mark.redis
def test_the_redis_count_is_atomic_across_clients(prefix):
    async def burst() -> list[int]:
        counters = [RedisCounter(REDIS_URL), RedisCounter(REDIS_URL)]
        try:
            return await asyncio.gather(*(counters[i % 2].hit(f"{prefix}:query:x", 7) for i in range(60)))
        finally:
            for c in counters:
                await c.aclose()

    assert sorted(asyncio.run(burst())) == list(range(1, 61))  # every hit saw its own count


def test_an_unreachable_redis_lets_requests_through(tmp_path, clock):
    settings = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0", rate_limit={"write_per_minute": 1})
    client = _app(settings, RedisCounter("redis://127.0.0.1:1/0"), clock)
    try:
        made = [client.post("/v1/collections", json={"name": f"c{i}"}, headers=KEY_A).status_code for i in range(3)]
        assert made == [201] * 3
    finally:
        client.__exit__(None, None, None)


def test_the_limiter_follows_the_broker(tmp_path):
    from services.gateway.ratelimit import rate_limiter

    assert isinstance(rate_limiter(make_settings(tmp_path)).counter, MemoryCounter)
    assert isinstance(rate_limiter(make_settings(tmp_path, broker_url=REDIS_URL)).counter, RedisCounter)
