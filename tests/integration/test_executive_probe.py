"""Safe Executive swaps: ``PUT /v1/admin/executive`` probes a new OpenAI-compatible endpoint with a small real
completion (a real HTTP server on a socket, or a closed port) and refuses one that fails, changing nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.conftest import api_key, make_settings

CLOSED = "http://127.0.0.1:1/v1"  # nothing listens on port 1: refused at once


@pytest.fixture
def client(tmp_path):
    settings = make_settings(tmp_path, executive_probe_timeout_s=0.5)
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        yield client


def _state(client: TestClient) -> tuple[dict, list]:
    return client.get("/v1/admin/executive").json(), client.get("/v1/admin/audit").json()


def _swap(url: str, api_key: str | None = None) -> dict:
    return {"backend": "openai", "base_url": url, "model": "big-exec", "api_key": api_key}


def test_a_live_endpoint_is_probed_with_a_small_completion_then_swapped_in(client, chat_server):
    r = client.put("/v1/admin/executive", json=_swap(chat_server.url, "sk-live"))
    assert r.status_code == 200, r.text
    [probe] = chat_server.seen
    assert probe["path"] == "/v1/chat/completions" and probe["authorization"] == "Bearer sk-live"
    assert probe["body"]["model"] == "big-exec" and probe["body"]["max_tokens"] <= 8
    executive, audit = _state(client)
    assert executive["base_url"] == chat_server.url and [e["action"] for e in audit] == ["executive.swap"]


@pytest.mark.parametrize(
    ("mode", "key", "message"),
    [
        ("unreachable", None, f"the executive 'big-exec' at {CLOSED} failed a test completion (LLM server {CLOSED} "
                              "unreachable"),
        ("fail", None, "failed a test completion (LLM server http://127.0.0.1:"),
        ("ok", "wrong", "answered 401"),  # the provider refuses the key
        ("hang", None, "did not answer a test completion within 0.5 s; not swapped"),
    ],
)  # fmt: skip
def test_a_failing_endpoint_is_refused_and_nothing_changes(client, chat_server, mode, key, message):
    before = _state(client)
    chat_server.mode, chat_server.key = mode, "right" if key else None
    url = CLOSED if mode == "unreachable" else chat_server.url
    r = client.put("/v1/admin/executive", json=_swap(url, key))
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert "not swapped" in r.json()["detail"] and (key is None or key not in r.json()["detail"])
    assert _state(client) == before  # still the local executive, and nothing audited
    assert before[0]["backend"] == "local" and before[1] == []
