"""Shared fixtures. Real services: PostgreSQL and Redis at 127.0.0.1 (see ../shared/ENVIRONMENT.md)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from benchmarks import infra
from benchmarks.infra import free_port
from memo.settings import LLMRole, Settings, get_settings

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("MEMO_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MEMO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real packaged SmolLM2, prepared once (shared with `make run` through the repo's .memo directory)."""
    from memo.llm.prepare import prepare_default_model

    path = Path(os.environ.get("MEMO_TEST_MODEL_DIR", REPO / ".memo" / "models" / "SmolLM2-135M-Instruct"))
    return prepare_default_model(path)


def make_settings(tmp_path: Path, model_dir: Path | None = None, **overrides: object) -> Settings:
    roles: dict[str, object] = {}
    if model_dir is not None:
        roles = {r: LLMRole(model=str(model_dir)) for r in ("generator", "memory", "executive")}
    # tiny training runs learn little: the gate runs and records its figures but lets them through,
    # unless a test sets its own thresholds
    gate = {"min_recall": 0.0, "max_forgetting": 1.0}
    return get_settings(data_dir=tmp_path / "data", **{"gate": gate, **roles, **overrides})


def api_key(settings: Settings, role: str = "admin", collections: list[str] | None = None) -> dict[str, str]:
    """The ``Authorization`` header of a new API key in the settings' database (migrated here): every request to
    ``/v1`` needs one. The default is an admin key granted every collection."""
    from memo import keys
    from memo.db import Database

    db = Database(settings)
    db.migrate()
    try:
        with db.session() as s:
            _, secret = keys.create_key(s, f"test {role}", role, collections)
    finally:
        db.dispose()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def fresh_database(prefix: str = "memo_test") -> AbstractContextManager[str]:
    """A fresh, empty database on the real PostgreSQL server (its URL), dropped afterwards."""
    return infra.fresh_database(PG_ADMIN_URL, prefix)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, dropped afterwards."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def vllm_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM CPU server (deploy/vllm/serve.sh) on the packaged model, LoRA enabled. Yields its /v1 URL."""
    import signal
    import subprocess
    import time

    import httpx

    venv = Path(os.environ.get("MEMO_VLLM_VENV", REPO / ".venv-vllm"))
    if not (venv / "bin" / "python").exists():
        pytest.fail(f"no vLLM environment at {venv}: run `make vllm-env`")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "deploy/vllm/serve.sh"), str(venv), str(model_dir), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready after 600 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_for_job(get_job, job_id: str, timeout_s: float = 1200) -> dict:
    """Poll a job until it succeeds or fails (a condition with a deadline, not a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']} in stage {job['stage']} after {timeout_s} s")


class ChatServer:
    """A real OpenAI-compatible HTTP server on a free port, in a thread: ``POST /v1/chat/completions`` answers
    ``reply`` (a text, or a function of the request's JSON body that returns one), ``GET /v1/models`` lists
    ``served-model``. ``mode``: "ok"; "fail" (500 to completions); "hang"
    (completions wait until the test ends); "no-schema" (400 to a request with ``response_format``, as a provider
    without JSON-schema support). ``key``: when set, other keys get 401. ``seen``: every request (path,
    authorization, JSON body)."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.mode = "ok"
        self.reply: str | Callable[[dict], str] = "OK"
        self.key: str | None = None
        self.seen: list[dict] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _request(self, body: dict | None) -> bool:
                auth = self.headers.get("Authorization")
                outer.seen.append({"path": self.path, "authorization": auth, "body": body})
                if outer.key is not None and auth != f"Bearer {outer.key}":
                    self._answer(401, {"error": {"message": "invalid api key"}})
                    return False
                return True

            def do_GET(self) -> None:
                if self._request(None):
                    ok = self.path == "/v1/models"
                    self._answer(200 if ok else 404, {"object": "list", "data": [{"id": "served-model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._request(body):
                    return
                if self.path != "/v1/chat/completions":
                    self._answer(404, {"error": {"message": "no such route"}})
                elif outer.mode == "fail":
                    self._answer(500, {"error": {"message": "model crashed"}})
                elif outer.mode == "hang":
                    outer.release.wait(60)  # bounded; set when the test ends
                    self._answer(200, {"choices": [{"message": {"content": outer.reply}}]})
                elif outer.mode == "no-schema" and "response_format" in body:
                    error = "Invalid parameter: 'response_format' of type 'json_schema' is not supported"
                    self._answer(400, {"error": {"message": error}})
                else:
                    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
                    reply = outer.reply(body) if callable(outer.reply) else outer.reply
                    message = {"role": "assistant", "content": reply}
                    self._answer(200, {"choices": [{"message": message}], "usage": usage})

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    try:
        yield server
    finally:
        server.close()
