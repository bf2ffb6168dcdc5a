"""How the next memory version is built from the active one's ledger (pure decision logic)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from memo.db import JobKind
from memo.pipeline import delta_recipe, plan_update
from memo.settings import get_settings

BASE = "/models/base"


def settings(**train: Any):
    return get_settings(memory={"model": BASE}, train={"update_mode": "merge", "consolidate_after": 4, **train})


def version(*entries: tuple[str, list[str]], base: str = BASE, method: str = "lora") -> Any:
    ledger = [{"path": p, "documents": d} for p, d in entries]
    return SimpleNamespace(ledger=ledger, base_model=base, metrics={"method": method})


def job(kind: JobKind = JobKind.ingest) -> Any:
    return SimpleNamespace(kind=kind)


V = version(("full", ["a", "b"]), ("d1", ["c"]), ("d2", ["d", "e"]))


def test_a_new_document_trains_a_delta_and_keeps_the_ledger():
    plan = plan_update(settings(), job(), V, {"a", "b", "c", "d", "e", "f"}, {"f"})
    assert plan.mode == "merge" and plan.train_docs == {"f"}
    assert [e["path"] for e in plan.keep] == ["full", "d1", "d2"]


def test_removing_a_document_drops_its_delta_and_retrains_its_companions():
    plan = plan_update(settings(), job(JobKind.remove), V, {"a", "b", "c", "e"}, set())
    assert plan.mode == "merge" and [e["path"] for e in plan.keep] == ["full", "d1"]
    assert plan.train_docs == {"e"}  # d2 also held e: e is learned again in the new delta


def test_removing_a_document_alone_in_its_delta_only_drops_it():
    plan = plan_update(settings(), job(JobKind.remove), V, {"a", "b", "d", "e"}, set())
    assert plan.mode == "merge" and plan.train_docs == set()
    assert [e["path"] for e in plan.keep] == ["full", "d2"]


def test_full_retrain_when_merging_cannot_work():
    live = {"a", "b", "c", "d", "e", "f"}
    cases = {
        "a document of the base adapter": (settings(), job(JobKind.remove), V, {"b", "c", "d", "e"}),
        "consolidation": (settings(), job(JobKind.consolidate), V, live),
        "update_mode=retrain": (settings(update_mode="retrain"), job(), V, live),
        "method=full": (settings(method="full"), job(), V, live),
        "no earlier LoRA version": (settings(), job(), None, live),
        "full fine-tuned parent": (settings(), job(), version(("m", ["a"]), method="full"), live),
        "base model changed": (settings(), job(), version(("full", ["a"]), base="/other"), live),
        "consolidate_after": (settings(consolidate_after=3), job(), V, live),
    }
    for name, (cfg, j, prev, docs) in cases.items():
        plan = plan_update(cfg, j, prev, docs, {"f"} & docs)
        assert plan.mode == "full", name
        assert plan.train_docs == docs and plan.keep == [] and plan.reason, name


def test_consolidation_is_off_when_consolidate_after_is_zero():
    long = version(("full", ["a"]), *[(f"d{i}", [f"x{i}"]) for i in range(20)])
    live = {"a", "new", *[f"x{i}" for i in range(20)]}
    assert plan_update(settings(consolidate_after=0), job(), long, live, {"new"}).mode == "merge"
    assert plan_update(settings(), job(), long, live, {"new"}).mode == "full"


def test_rehearsal_draws_from_the_kept_documents_only_and_names_them():
    from memo.pipeline import UpdatePlan, rehearsal

    plan = UpdatePlan("merge", V.ledger[:2], {"f"}, "")  # keeps full (a, b) and d1 (c); d2 (d, e) is dropped
    rows = [(f"r{i}", f"q{i}", f"a{i}", doc) for i, doc in enumerate("aabbcdef")]
    pairs, docs = rehearsal(rows, plan, 3, seed=0)
    assert len(pairs) == 3 and docs <= {"a", "b", "c"}
    assert {q for _, q, _ in pairs} <= {"q0", "q1", "q2", "q3", "q4"}
    assert all(i == f"r{q[1:]}" and a == f"a{q[1:]}" for i, q, a in pairs)
    assert rehearsal(rows, plan, 3, seed=0) == (pairs, docs)  # seeded
    assert rehearsal(rows, plan, 0, seed=0) == ([], set())
    everything, all_docs = rehearsal(rows, plan, 99, seed=0)
    assert len(everything) == 5 and all_docs == {"a", "b", "c"}  # at most the pool


def test_a_hard_share_of_the_rehearsal_is_what_the_served_memory_knows_least():
    from memo.pipeline import UpdatePlan, rehearsal

    plan = UpdatePlan("merge", V.ledger[:2], {"f"}, "")  # the pool: r0-r4 (documents a, b, c)
    rows = [(f"r{i}", f"q{i}", f"a{i}", doc) for i, doc in enumerate("aabbcdef")]
    # r5 (a dropped document) would be the hardest, r1 has no recorded loss, a NaN is no loss
    losses = {"r0": 0.1, "r2": 2.0, "r3": 1.5, "r4": float("nan"), "r5": 9.0}
    hardest, docs = rehearsal(rows, plan, 2, seed=0, losses=losses, hard=1.0)
    assert [i for i, *_ in hardest] == ["r2", "r3"] and docs == {"b"}
    mixed, _ = rehearsal(rows, plan, 4, seed=0, losses=losses, hard=0.5)
    assert [i for i, *_ in mixed[:2]] == ["r2", "r3"] and len({i for i, *_ in mixed}) == 4
    # without losses, or at share 0, the draw is the random one
    assert rehearsal(rows, plan, 3, seed=0, losses=losses, hard=0.0) == rehearsal(rows, plan, 3, seed=0)
    assert rehearsal(rows, plan, 3, seed=0, hard=1.0) == rehearsal(rows, plan, 3, seed=0)


def test_a_delta_trains_its_own_epochs_batch_and_rate_on_its_top_layers_and_keeps_the_rest_of_the_recipe():
    cfg = settings(
        epochs=8,
        update_epochs=2,
        update_top_layers=6,
        min_steps=32,
        lr=5e-4,
        update_lr=1e-3,
        update_batch_size=16,
        dropout=0.1,
        update_dropout=0.02,
    ).train
    assert (cfg.top_layers, cfg.batch_size, cfg.lr, cfg.dropout) == (0, 4, 5e-4, 0.1)  # a full training's own
    recipe = delta_recipe(cfg)
    assert (recipe.epochs, recipe.top_layers, recipe.min_steps, recipe.batch_size) == (2, 6, 32, 16)
    assert (recipe.lr, recipe.dropout) == (1e-3, 0.02)
    assert recipe.rank == cfg.rank and recipe.seed == cfg.seed
    # 0: the full recipe's own
    full = delta_recipe(settings(epochs=8, update_epochs=0, update_batch_size=0, update_lr=0, lr=5e-4).train)
    assert (full.epochs, full.batch_size, full.lr) == (8, 4, 5e-4)
