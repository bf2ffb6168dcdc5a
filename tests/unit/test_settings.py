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


def test_the_update_policy_nests_its_delta_recipe_and_merge_settings(monkeypatch):
    monkeypatch.setenv("MEMO_TRAIN__UPDATE", "merge")
    monkeypatch.setenv("MEMO_TRAIN__DELTA__EPOCHS", "3")
    monkeypatch.setenv("MEMO_TRAIN__DELTA__REPLAY_HARD", "0.5")
    monkeypatch.setenv("MEMO_TRAIN__MERGE__COMBINATION", "cat")
    monkeypatch.setenv("MEMO_TRAIN__MERGE__RANK", "32")
    monkeypatch.setenv("MEMO_TRAIN__METHOD", "full_finetune")
    train = get_settings().train
    assert (train.update, train.method) == ("merge", "full_finetune")
    assert (train.delta.epochs, train.delta.replay_hard, train.delta.batch_size) == (3, 0.5, 8)
    assert (train.merge.combination, train.merge.rank, train.merge.density) == ("cat", 32, 0.3)
    assert train.epochs == 8  # the whole training's own


def test_training_defaults():
    train = Settings().train
    assert (train.method, train.update, train.consolidate_after) == ("lora", "retrain", 8)
    assert (train.epochs, train.batch_size, train.lr, train.top_layers, train.dropout) == (8, 4, 1e-3, 0, 0.05)
    d = train.delta
    assert (d.epochs, d.batch_size, d.lr, d.top_layers, d.dropout, d.replay, d.replay_hard) == (4, 8, 2e-3, 8, 0, 1, 1)
    assert (train.merge.combination, train.merge.density, train.merge.rank) == ("svd", 0.3, 64)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MEMO_TRAIN__UPDATE_MODE", "merge"), ("MEMO_TRAIN__UPDATE_EPOCHS", "2"), ("MEMO_TRAIN__DELTA__FROM", "base")],
)
def test_a_training_setting_that_does_not_exist_is_refused(monkeypatch, variable, value):
    # a renamed or removed variable would otherwise be ignored without a word
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        get_settings()


def test_full_is_no_training_method():
    with pytest.raises(ValidationError, match="full_finetune"):
        get_settings(train={"method": "full"})
