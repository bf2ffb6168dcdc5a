import pytest
from pydantic import ValidationError

from memo.settings import Settings, get_settings


def test_env_nested_roles(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEMO_MEMORY__BACKEND", "openai")
    monkeypatch.setenv("MEMO_MEMORY__BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("MEMO_MEMORY__MODEL", "smollm2")
    monkeypatch.setenv("MEMO_TRAIN__RANK", "8")
    s = get_settings()
    assert s.memory.backend == "openai" and s.memory.base_url.endswith("/v1")
    assert s.train.rank == 8
    assert s.db_url == f"sqlite:///{(tmp_path / 'memo.db').resolve()}"
    assert s.memory_base_model == str(s.default_model_dir)  # training still needs local weights


def test_openai_role_needs_url_and_model(monkeypatch):
    monkeypatch.setenv("MEMO_EXECUTIVE__BACKEND", "openai")
    with pytest.raises(ValidationError, match="base_url and model"):
        Settings()


def test_chunk_overlap_must_be_smaller():
    with pytest.raises(ValidationError, match="overlap"):
        get_settings(chunk={"words": 50, "overlap": 50})
