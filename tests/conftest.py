"""Shared fixtures. Real services: PostgreSQL and Redis at 127.0.0.1 (see ../shared/ENVIRONMENT.md)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"memo_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
