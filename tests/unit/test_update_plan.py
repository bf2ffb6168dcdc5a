"""The update policy (memo.train.update): how the next memory version is built from the active one's ledger, and what
it trains on."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from memo.db import (
    Chunk,
    Collection,
    Database,
    Document,
    DocumentStatus,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    VersionStatus,
)
from memo.errors import InvalidInput
from memo.settings import Recipe, get_settings
from memo.train.update import (
    LedgerEntry,
    UpdatePlan,
    delta_recipe,
    plan_update,
    rehearsal,
    select_training,
)
from tests.conftest import make_settings

BASE = "/models/base"


def settings(**train: Any):
    return get_settings(memory={"model": BASE}, train={"update": "merge", "consolidate_after": 4, **train})


def version(*entries: tuple[str, list[str]], base: str = BASE, method: str = "lora") -> Any:
    ledger = [{"path": p, "documents": d} for p, d in entries]
    return SimpleNamespace(ledger=ledger, base_model=base, metrics={"method": method}, adapter_path="served")


V = version(("first", ["a", "b"]), ("d1", ["c"]), ("d2", ["d", "e"]))


def test_a_ledger_entry_is_stored_as_a_dict():
    entry = LedgerEntry("/adapters/x", ["a", "b"], 12)
    assert entry.to_dict() == {"path": "/adapters/x", "documents": ["a", "b"], "examples": 12}
    assert LedgerEntry.from_dict(entry.to_dict()) == entry
    assert LedgerEntry.from_dict({"path": "/p", "documents": ["a"]}).examples == 0  # an entry without its count


def test_a_new_document_trains_a_delta_on_top_of_the_served_memory():
    plan = plan_update(settings(), V, {"a", "b", "c", "d", "e", "f"}, {"f"})
    assert plan.mode == "merge" and plan.train_docs == {"f"} and plan.dropped == 0
    assert [e.path for e in plan.keep] == ["first", "d1", "d2"]
    assert plan.served == "served"  # every entry kept: the active adapter is their merge already


def test_removing_a_document_drops_its_delta_and_retrains_its_companions():
    plan = plan_update(settings(), V, {"a", "b", "c", "e"}, set())
    assert plan.mode == "merge" and [e.path for e in plan.keep] == ["first", "d1"]
    assert plan.train_docs == {"e"}  # d2 also held e: e is learned again in the new delta
    assert plan.dropped == 1 and plan.served is None  # the kept entries are merged afresh


def test_removing_a_document_alone_in_its_delta_only_drops_it():
    plan = plan_update(settings(), V, {"a", "b", "d", "e"}, set())
    assert plan.mode == "merge" and plan.train_docs == set()
    assert [e.path for e in plan.keep] == ["first", "d2"]


def test_retrain_when_merging_cannot_work():
    live = {"a", "b", "c", "d", "e", "f"}
    cases = {
        "a document of the base adapter": (settings(), V, {"b", "c", "d", "e"}, False),
        "consolidation": (settings(), V, live, True),
        "update=retrain": (settings(update="retrain"), V, live, False),
        "method=full_finetune": (settings(method="full_finetune"), V, live, False),
        "no earlier LoRA version": (settings(), None, live, False),
        "full fine-tuned parent": (settings(), version(("m", ["a"]), method="full_finetune"), live, False),
        "full fine-tuned parent, stored as 'full'": (settings(), version(("m", ["a"]), method="full"), live, False),
        "base model changed": (settings(), version(("first", ["a"]), base="/other"), live, False),
        "consolidate_after": (settings(consolidate_after=3), V, live, False),
    }
    for name, (cfg, prev, docs, consolidate) in cases.items():
        plan = plan_update(cfg, prev, docs, {"f"} & docs, consolidate=consolidate)
        assert plan.mode == "retrain", name
        assert plan.train_docs == docs and plan.keep == [] and plan.reason, name


def test_consolidation_is_off_when_consolidate_after_is_zero():
    long = version(("first", ["a"]), *[(f"d{i}", [f"x{i}"]) for i in range(20)])
    live = {"a", "new", *[f"x{i}" for i in range(20)]}
    assert plan_update(settings(consolidate_after=0), long, live, {"new"}).mode == "merge"
    assert plan_update(settings(), long, live, {"new"}).mode == "retrain"


def _kept_plan() -> UpdatePlan:
    """Keeps the first adapter (a, b) and d1 (c); d2 (d, e) is dropped; f is new."""
    return UpdatePlan("merge", [LedgerEntry.from_dict(e) for e in V.ledger[:2]], {"f"})


ROWS = [(f"r{i}", f"q{i}", f"a{i}", doc) for i, doc in enumerate("aabbcdef")]


def test_rehearsal_draws_from_the_kept_documents_only_and_names_them():
    plan = _kept_plan()
    pairs, docs = rehearsal(ROWS, plan, 3, seed=0)
    assert len(pairs) == 3 and docs <= {"a", "b", "c"}
    assert {q for _, q, _ in pairs} <= {"q0", "q1", "q2", "q3", "q4"}
    assert all(i == f"r{q[1:]}" and a == f"a{q[1:]}" for i, q, a in pairs)
    assert rehearsal(ROWS, plan, 3, seed=0) == (pairs, docs)  # seeded
    assert rehearsal(ROWS, plan, 0, seed=0) == ([], set())
    everything, all_docs = rehearsal(ROWS, plan, 99, seed=0)
    assert len(everything) == 5 and all_docs == {"a", "b", "c"}  # at most the pool


def test_a_hard_share_of_the_rehearsal_is_what_the_served_memory_knows_least():
    plan = _kept_plan()  # the pool: r0-r4 (documents a, b, c)
    # r5 (a dropped document) would be the hardest, r1 has no recorded loss, a NaN is no loss
    losses = {"r0": 0.1, "r2": 2.0, "r3": 1.5, "r4": float("nan"), "r5": 9.0}
    hardest, docs = rehearsal(ROWS, plan, 2, seed=0, losses=losses, hard=1.0)
    assert [i for i, *_ in hardest] == ["r2", "r3"] and docs == {"b"}
    mixed, _ = rehearsal(ROWS, plan, 4, seed=0, losses=losses, hard=0.5)
    assert [i for i, *_ in mixed[:2]] == ["r2", "r3"] and len({i for i, *_ in mixed}) == 4
    # without losses, or at share 0, the draw is the random one
    assert rehearsal(ROWS, plan, 3, seed=0, losses=losses, hard=0.0) == rehearsal(ROWS, plan, 3, seed=0)
    assert rehearsal(ROWS, plan, 3, seed=0, hard=1.0) == rehearsal(ROWS, plan, 3, seed=0)


def test_a_delta_trains_its_own_epochs_batch_and_rate_on_its_top_layers_and_keeps_the_rest_of_the_recipe():
    delta = {"epochs": 2, "top_layers": 6, "lr": 1e-3, "batch_size": 16, "dropout": 0.02}
    cfg = settings(epochs=8, min_steps=32, lr=5e-4, dropout=0.1, delta=delta).train
    assert (cfg.top_layers, cfg.batch_size, cfg.lr, cfg.dropout) == (0, 4, 5e-4, 0.1)  # a whole training's own
    recipe = delta_recipe(cfg)
    assert type(recipe) is Recipe  # the training recipe alone, without the update policy
    assert (recipe.epochs, recipe.top_layers, recipe.min_steps, recipe.batch_size) == (2, 6, 32, 16)
    assert (recipe.lr, recipe.dropout) == (1e-3, 0.02)
    assert recipe.rank == cfg.rank and recipe.seed == cfg.seed
    # 0: the whole training's own
    whole = delta_recipe(settings(epochs=8, lr=5e-4, delta={"epochs": 0, "batch_size": 0, "lr": 0}).train)
    assert (whole.epochs, whole.batch_size, whole.lr) == (8, 4, 5e-4)


def test_the_default_delta_recipe_is_unchanged():
    recipe = delta_recipe(get_settings().train)
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.top_layers, recipe.dropout) == (4, 8, 2e-3, 8, 0.0)
    assert (recipe.min_steps, recipe.rank, recipe.alpha, recipe.patience) == (32, 16, 32, 2)


# -- what a version trains on, read from the database -------------------------------------------------------------
@pytest.fixture
def db(tmp_path):
    database = Database(make_settings(tmp_path))
    database.migrate()
    yield database
    database.dispose()


def _collection(db: Database) -> dict[str, Any]:
    """Documents A and B, learned by version 1 (A) and 2 (B, a delta); C reflected, not trained yet. B has a
    cross-document pair also made from A; C a fact asked three ways (the held-out split takes one of them)."""
    ids: dict[str, Any] = {}
    with db.session() as s:
        coll = Collection(name="c")
        s.add(coll)
        s.flush()
        ids["collection"] = coll.id
        n = 0
        for name, status, answers in [
            ("A", DocumentStatus.trained, ["x1", "x2", "x3", "x4"]),
            ("B", DocumentStatus.trained, ["y1", "y2"]),
            ("C", DocumentStatus.reflected, ["z1", "z1", "z1", "z2", "z3", "z4", "z5", "z6", "z7", "z8"]),
        ]:
            doc = Document(collection_id=coll.id, filename=name, media_type="text/plain", content_hash=name,
                           size_bytes=1, status=status)  # fmt: skip
            s.add(doc)
            s.flush()
            chunk = Chunk(document_id=doc.id, seq=0, text=name)
            s.add(chunk)
            s.flush()
            ids[name], ids[f"{name}_chunk"], ids[f"{name}_pairs"] = doc.id, chunk.id, []
            for answer in answers:
                r = Reflection(id=f"r{n:02d}", collection_id=coll.id, document_id=doc.id, chunk_id=chunk.id,
                               kind="direct", question=f"q{n}", answer=answer, question_hash=f"h{n}")  # fmt: skip
                s.add(r)
                s.flush()
                s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=doc.id))
                ids[f"{name}_pairs"].append(r.id)
                n += 1
        cross = ids["B_pairs"][0]
        s.add(ReflectionSource(reflection_id=cross, chunk_id=ids["A_chunk"], document_id=ids["A"]))
        s.flush()
    return ids


def _version(db: Database, ids: dict[str, Any], ledger: list[LedgerEntry], **metrics: Any) -> MemoryVersion:
    with db.session() as s:
        v = MemoryVersion(collection_id=ids["collection"], base_model=BASE, mode="merge", status=VersionStatus.ready,
                          active=True, adapter_path="/served", ledger=[e.to_dict() for e in ledger],
                          metrics={"method": "lora", **metrics})  # fmt: skip
        s.add(v)
    return v


def test_an_upload_trains_its_pairs_less_the_held_out_with_a_rehearsal_of_what_is_kept(db):
    ids = _collection(db)
    a, b, c = ids["A_pairs"], ids["B_pairs"], ids["C_pairs"]
    ledger = [LedgerEntry("/v1", [ids["A"]], 4), LedgerEntry("/d2", [ids["A"], ids["B"]], 2)]
    previous = _version(db, ids, ledger, heldout_ids=[a[3]], pair_losses={a[0]: 0.1, a[1]: 3.0, b[0]: 2.0})
    cfg = settings(delta={"replay": 0.5, "replay_hard": 0.5})
    with db.session() as s:
        data = select_training(s, cfg, ids["collection"], previous)
    assert data.plan.mode == "merge" and data.plan.train_docs == {ids["C"]} and data.plan.served == "/served"
    assert data.documents == [ids["A"], ids["B"], ids["C"]]
    assert len(data.heldout) == 1 and data.heldout[0][0] in c[:3]  # one question of the fact asked three ways
    assert [i for i, *_ in data.new] == [i for i in c if i != data.heldout[0][0]]
    # half of the rehearsal (4 of 9 new pairs' 0.5) is the least known, the rest random; never A's held-out pair
    assert [i for i, *_ in data.rehearsed[:2]] == [a[1], b[0]] and len(data.rehearsed) == 4
    assert a[3] not in {i for i, *_ in data.rehearsed} and not {i for i, *_ in data.rehearsed} & set(c)
    assert data.trained == data.new + data.rehearsed and len(data.pairs) == 13
    assert data.heldout_pairs == [(q, ans) for _, q, ans in data.heldout]
    # the delta carries C and every document it rehearsed (b[0], so B at least)
    doc_of = {i: ids[name] for name in "ABC" for i in ids[f"{name}_pairs"]}
    assert data.delta_documents == sorted({ids["C"]} | {doc_of[i] for i, *_ in data.rehearsed})
    assert ids["B"] in data.delta_documents
    assert data.known == previous.metrics["pair_losses"]
    assert data.reflections == set(a + b + c)


def test_a_removal_retrains_a_dropped_delta_s_documents_named_by_their_cross_document_sources(db):
    ids = _collection(db)
    with db.session() as s:  # C is learned too; its delta is dropped when B is deleted
        s.get(Document, ids["C"]).status = DocumentStatus.trained
    ledger = [LedgerEntry("/v1", [ids["A"]]), LedgerEntry("/d2", [ids["B"], ids["C"]])]
    previous = _version(db, ids, ledger)
    with db.session() as s:
        s.get(Document, ids["B"]).status = DocumentStatus.deleted
    with db.session() as s:
        data = select_training(s, settings(delta={"replay": 0}), ids["collection"], previous)
    assert data.plan.mode == "merge" and data.plan.train_docs == {ids["C"]} and data.plan.dropped == 1
    assert data.heldout == [] and [i for i, *_ in data.new] == ids["C_pairs"]  # nothing new: nothing held out
    assert data.rehearsed == [] and data.delta_documents == [ids["C"]]


def test_new_documents_can_be_named_and_a_cross_document_pair_names_its_other_source(db):
    ids = _collection(db)
    previous = _version(db, ids, [LedgerEntry("/v1", [ids["A"]])])
    with db.session() as s:  # B as the new document of an update over version 1 (as the update benchmark asks)
        data = select_training(s, settings(delta={"replay": 0}), ids["collection"], previous, new_docs=[ids["B"]])
    assert data.plan.train_docs == {ids["B"]} and [i for i, *_ in data.new] == ids["B_pairs"]
    assert data.delta_documents == sorted([ids["A"], ids["B"]])  # B's first pair was also made from A


def test_a_retrain_trains_every_live_pair_less_the_new_documents_held_out(db):
    ids = _collection(db)
    previous = _version(db, ids, [LedgerEntry("/v1", [ids["A"]])])
    with db.session() as s:
        data = select_training(s, settings(), ids["collection"], previous, consolidate=True)
    assert data.plan.mode == "retrain" and data.plan.reason == "consolidation requested"
    held = {i for i, *_ in data.heldout}
    assert len(held) == 1 and held < set(ids["C_pairs"])
    assert [i for i, *_ in data.new] == [i for i in ids["A_pairs"] + ids["B_pairs"] + ids["C_pairs"] if i not in held]
    assert data.rehearsed == [] and data.delta_documents == [] and data.known == {}


def test_nothing_to_learn_is_refused(db):
    ids = _collection(db)
    with db.session() as s:
        for name in "ABC":
            s.get(Document, ids[name]).status = DocumentStatus.deleted
    with pytest.raises(InvalidInput, match="no documents left"), db.session() as s:
        select_training(s, settings(), ids["collection"], None)


def test_versions_stored_before_the_rename_are_rewritten(tmp_path):
    """Migration 0005: a version built by retraining was stored as mode "full", a full fine-tuning's method as
    "full"; they read as "retrain" and "full_finetune" after it, and a downgrade restores them."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from memo.db.session import MIGRATIONS_DIR

    database = Database(make_settings(tmp_path))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection_url"] = database.url
    command.upgrade(cfg, "0004")
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO collections (id, name, created_at) VALUES ('c', 'c', CURRENT_TIMESTAMP)"))
        for vid, mode, method in [("v1", "full", "full"), ("v2", "merge", "lora"), ("v3", "full", "lora")]:
            conn.execute(
                text(
                    "INSERT INTO memory_versions (id, collection_id, base_model, mode, status, active, n_reflections, "
                    "metrics, created_at) VALUES (:id, 'c', 'm', :mode, 'ready', false, 0, :metrics, CURRENT_TIMESTAMP)"
                ),
                {"id": vid, "mode": mode, "metrics": f'{{"method": "{method}", "steps": 3}}'},
            )
    database.migrate()

    def stored() -> list[tuple[str, str, dict[str, Any]]]:
        with database.session() as s:
            versions = s.query(MemoryVersion).order_by(MemoryVersion.id).all()
            return [(v.id, v.mode, v.metrics) for v in versions]

    assert stored() == [
        ("v1", "retrain", {"method": "full_finetune", "steps": 3}),
        ("v2", "merge", {"method": "lora", "steps": 3}),
        ("v3", "retrain", {"method": "lora", "steps": 3}),
    ]
    with database.engine.begin() as conn:  # the column's own default is the new name too
        conn.execute(
            text(
                "INSERT INTO memory_versions (id, collection_id, base_model, status, active, n_reflections, metrics, "
                "created_at) VALUES ('v4', 'c', 'm', 'ready', false, 0, '{}', CURRENT_TIMESTAMP)"
            )
        )
    assert stored()[-1][1] == "retrain"
    command.downgrade(cfg, "0004")
    with database.engine.begin() as conn:
        rows = conn.execute(text("SELECT id, mode, metrics FROM memory_versions ORDER BY id")).all()
    assert [(i, mode, '"full"' in metrics) for i, mode, metrics in rows] == [
        ("v1", "full", True),
        ("v2", "merge", False),
        ("v3", "full", False),
        ("v4", "full", False),
    ]
    database.dispose()
