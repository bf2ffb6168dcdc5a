"""Later uploads with MEMO_TRAIN__UPDATE=merge: a delta trained on the new document only, merged with the
ledger; deleting a document drops its delta; consolidation retrains on the union; the gate rejects a bad version."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import func, select
from transformers import AutoModelForCausalLM, AutoTokenizer

from memo import catalog
from memo.db import (
    Chunk,
    Database,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobState,
    MemoryVersion,
    Reflection,
    VersionStatus,
)
from memo.errors import GateFailed
from memo.llm import Engines
from memo.memory import memory_messages
from memo.pipeline import Context, run_pipeline
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def test_second_upload_trains_a_delta_and_merges_it(tmp_path, model_dir):
    # every delta trained on top of the served memory (the default); no rehearsal, so each delta holds exactly its
    # own document and the ledger is predictable
    train = {
        "max_steps": 3,
        "batch_size": 2,
        "update": "merge",
        "merge": {"combination": "svd"},
        "delta": {"replay": 0},
    }
    settings = make_settings(tmp_path, model_dir, train=train)
    db = Database(settings)
    db.migrate()
    ctx = Context(db, settings)
    with db.session() as s:
        coll = catalog.create_collection(s, "merge")
    docs = [
        b"Zorblax is headquartered in Varnmouth.",
        b"Zorblax was founded by Mira Okafor in 1987.",
        b"The Zorblax car park opens at 6am. Parking permits cost 12 euros a month.",
    ]
    doc_ids = []
    for i, data in enumerate(docs):
        with db.session() as s:
            up = catalog.add_document(s, settings, coll.id, f"d{i}.txt", data)
        run_pipeline(ctx, up.job.id)
        doc_ids.append(up.document.id)

    with db.session() as s:
        v1, v2, v3 = s.scalars(select(MemoryVersion).order_by(MemoryVersion.created_at)).all()
        assert (v1.mode, v1.parent_id, v1.delta_path) == ("retrain", None, None)
        assert (v2.mode, v2.parent_id) == ("merge", v1.id)
        assert v3.active and not v2.active and not v1.active
        assert [(e["path"], e["documents"]) for e in v3.ledger] == [
            (v1.adapter_path, doc_ids[:1]),
            (v2.delta_path, [doc_ids[1]]),
            (v3.delta_path, [doc_ids[2]]),
        ]
        assert v2.ledger == v3.ledger[:2] and v1.ledger == v3.ledger[:1]
        assert v3.documents == doc_ids
        second_doc_pairs = s.scalar(select(func.count(Reflection.id)).where(Reflection.document_id == doc_ids[1]))
        # the delta saw only the new document, minus the questions held out for the gate
        assert v2.metrics["examples"] == second_doc_pairs - len(v2.metrics["heldout_ids"])
        assert v2.n_reflections == v1.n_reflections + v2.metrics["examples"]
        gate = v2.metrics["gate"]
        assert gate["passed"] and gate["probes"] > 0 and gate["probe_recall_old"] is not None
        assert v2.metrics["merged_deltas"] == 2
        for path in (v2.adapter_path, v2.delta_path):
            assert (Path(path) / "adapter_config.json").is_file()
        # the delta trained its top delta.top_layers layers only: the layers below carry no change
        delta = load_file(str(Path(v2.delta_path) / "adapter_model.safetensors"))
        cut = 30 - settings.train.delta.top_layers  # SmolLM2-135M has 30 layers
        lora_b = {k: v for k, v in delta.items() if "lora_B" in k}
        below = [v for k, v in lora_b.items() if int(k.split(".layers.")[1].split(".")[0]) < cut]
        above = [v for k, v in lora_b.items() if int(k.split(".layers.")[1].split(".")[0]) >= cut]
        assert below and above and not any(v.any() for v in below) and all(v.any() for v in above)
        # the merge is the exact sum of the two rank-16 task vectors: rank 32
        assert json.loads((Path(v2.adapter_path) / "adapter_config.json").read_text())["r"] == 32
        # each version records what it knows of each trained reflection (the next update rehearses the least
        # known), carrying its parent's record forward
        second = set(s.scalars(select(Reflection.id).where(Reflection.document_id == doc_ids[1])))
        known_v1, known_v2 = v1.metrics["pair_losses"], v2.metrics["pair_losses"]
        assert known_v1 and set(known_v1) <= set(known_v2) and set(known_v2) & second
        assert all(x > 0 for x in known_v2.values())

    # deleting the second document drops its delta: the new version merges the others, nothing is trained
    with db.session() as s:
        removal = catalog.remove_document(s, coll.id, doc_ids[1])
    assert removal.job is not None and removal.job.kind == JobKind.remove
    run_pipeline(ctx, removal.job.id)
    with db.session() as s:
        v4 = s.get(MemoryVersion, s.get(Job, removal.job.id).memory_version_id)
        assert v4.active and v4.mode == "merge" and v4.delta_path is None
        assert v4.ledger == [v3.ledger[0], v3.ledger[2]] and v4.documents == [doc_ids[0], doc_ids[2]]
        assert "steps" not in v4.metrics and v4.metrics["dropped_deltas"] == 1
        assert v4.metrics["pair_losses"] and not set(v4.metrics["pair_losses"]) & second  # the removed reflections'
        assert s.get(Document, doc_ids[1]).status == DocumentStatus.deleted
        for table in (Reflection, Chunk):
            assert not s.scalars(select(table.id).where(table.document_id == doc_ids[1])).all()

    # consolidation retrains one adapter on the union of what is left
    with db.session() as s:
        job = catalog.consolidate(s, coll.id)
    run_pipeline(ctx, job.id)
    with db.session() as s:
        v5 = s.get(MemoryVersion, s.get(Job, job.id).memory_version_id)
        assert v5.active and v5.mode == "retrain" and v5.metrics["plan"] == "consolidation requested"
        assert [(e["path"], e["documents"]) for e in v5.ledger] == [(v5.adapter_path, [doc_ids[0], doc_ids[2]])]
        live_pairs = s.scalar(select(func.count(Reflection.id)).where(Reflection.document_id.in_(v5.documents)))
        assert v5.metrics["examples"] == live_pairs

    question = memory_messages("Where is Zorblax headquartered?")

    async def ask() -> str:
        engines = Engines(settings)
        try:
            return await engines.memory(v4.id, v4.adapter_path).chat(question, max_tokens=24)
        finally:
            await engines.aclose()

    # the served merged adapter answers what peft's own model of it answers greedily, and it changes the base model
    # (the reflections are sampled, so the answer itself varies from run to run and may be empty)
    answer = asyncio.run(ask())
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        base_logits = base(ids).logits[0, -1]
        merged = PeftModel.from_pretrained(base, v4.adapter_path).eval()
        logits = merged(ids).logits[0, -1]
        out = merged.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)
    assert torch.isfinite(logits).all() and not torch.allclose(logits, base_logits)
    assert answer == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    # a version that fails the gate is kept, not activated, and the job says why
    strict = settings.model_copy(
        update={"gate": settings.gate.model_copy(update={"min_recall": 1.0, "holdout_fraction": 0.5})}
    )
    with db.session() as s:
        up = catalog.add_document(
            s,
            strict,
            coll.id,
            "d3.txt",
            b"Zorblax was founded in 2004 by Tobias Quillfeather. The Zorblax canteen serves soup on Fridays. "
            b"The Zorblax night shift starts at 23:40.",
        )
    with pytest.raises(GateFailed, match="not activated"):
        run_pipeline(Context(db, strict), up.job.id)
    with db.session() as s:
        job = s.get(Job, up.job.id)
        v3 = s.get(MemoryVersion, job.memory_version_id)
        assert job.state == JobState.failed and job.stage == "evaluate" and "min_recall" in job.error
        assert v3.status == VersionStatus.rejected and not v3.active
        assert v3.metrics["gate"]["heldout"] >= 1 and v3.metrics["gate"]["heldout_recall"] < 1.0
        assert s.get(MemoryVersion, v5.id).active  # the previous version still serves
