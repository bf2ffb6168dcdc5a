"""The MQAR benchmark's data and its train-on-a-pool mode."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.core.mqar import mqar_batch, run


@pytest.mark.parametrize(("seq_len", "n_pairs"), [(64, 4), (256, 64)])
def test_every_scored_position_holds_a_queried_key_whose_label_is_its_value(seq_len, n_pairs):
    vocab = 512
    x, y = mqar_batch(np.random.default_rng(0), 8, seq_len, n_pairs, vocab)
    assert x.shape == y.shape == (8, seq_len)
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        pairs = dict(zip(row_x[0 : 2 * n_pairs : 2], row_x[1 : 2 * n_pairs : 2], strict=True))
        assert len(pairs) == n_pairs and all(k < vocab // 2 <= v for k, v in pairs.items())
        scored = [(t, label) for t, label in enumerate(row_y) if label != -100]
        assert len(scored) == n_pairs  # every key queried once, after the context
        for t, label in scored:
            assert t >= 2 * n_pairs and pairs[row_x[t]] == label


def test_too_short_a_sequence_for_its_pairs_is_refused():
    with pytest.raises(ValueError, match="too short"):
        mqar_batch(np.random.default_rng(0), 1, 15, 4)


def test_a_pool_trained_model_is_tested_on_every_setting():
    settings = [(64, 4), (128, 8)]
    records = run("linear_attention", settings, 16, 1e-2, 2, 4, 0, 10, vocab=512, head_dim=8, train_mix="zoology")
    assert [(r["seq_len"], r["n_pairs"]) for r in records] == settings
    assert {r["train_mix"] for r in records} == {"zoology"} and len({r["params"] for r in records}) == 1
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    with pytest.raises(ValueError, match="one setting"):
        run("linear_attention", settings, 16, 1e-2, 1, 4, 0, 10, vocab=512)
