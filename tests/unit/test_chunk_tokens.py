"""Token-aware chunking with overlap: measured with the real tokenizer of the packaged model."""

from __future__ import annotations

import subprocess
import sys

from memo.ingest.chunk import approx_tokens, chunk_text, chunk_tokens, split_sentences, token_counter
from memo.settings import get_settings
from tests.conftest import REPO


def _long_document(n: int = 120) -> str:
    return " ".join(
        f"The Zorblax depot number {i} in Varnmouth stores {i * 7} crates of glassware since {1900 + i}."
        for i in range(n)
    )


def test_chunks_fit_the_token_budget_of_the_real_tokenizer_and_overlap(model_dir):
    count = token_counter(str(model_dir))
    assert count is not approx_tokens
    text = _long_document()
    chunks = chunk_tokens(text, tokens=200, overlap=40, count=count)
    assert len(chunks) >= 8  # a long document is cut into several chunks
    for c in chunks:
        assert count(c) <= 200
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        tail = split_sentences(prev)
        head = split_sentences(nxt)
        shared = [s for s in head if s in tail]
        assert shared and head[: len(shared)] == tail[-len(shared) :]  # whole sentences repeated
        assert sum(count(s) for s in shared) <= 40
    covered = {s for c in chunks for s in split_sentences(c)}
    assert covered == set(split_sentences(text))  # nothing lost


def test_overlong_sentence_is_split_by_tokens(model_dir):
    count = token_counter(str(model_dir))
    sentence = " ".join(f"glassware{i}" for i in range(300)) + "."
    chunks = chunk_tokens(sentence, tokens=64, overlap=0, count=count)
    assert len(chunks) > 3
    assert all(count(c) <= 64 for c in chunks)
    assert " ".join(chunks).split() == sentence.split()


def test_missing_tokenizer_falls_back_to_an_approximation(tmp_path):
    assert token_counter(str(tmp_path / "nothing-here")) is approx_tokens
    assert token_counter(None) is approx_tokens
    assert approx_tokens("") == 0
    assert approx_tokens("one two three four") == 6  # ceil(4 * 4 / 3), longer than chars / 4
    chunks = chunk_tokens(_long_document(30), tokens=100, overlap=10)
    assert len(chunks) > 3 and all(approx_tokens(c) <= 100 for c in chunks)


def test_word_chunking_keeps_its_signature():
    chunks = chunk_text(" ".join(["word"] * 95) + ".", words=40, overlap=5)
    assert [len(c.split()) for c in chunks] == [40, 40, 15]


def test_chunk_settings_default_to_tokens_of_the_generator(tmp_path):
    s = get_settings(data_dir=tmp_path)
    assert s.chunk.unit == "tokens" and s.chunk.token_overlap < s.chunk.tokens
    assert s.tokenizer_path == str(s.default_model_dir)
    s = get_settings(data_dir=tmp_path, chunk={"tokenizer": "/some/dir"})
    assert s.tokenizer_path == "/some/dir"


def test_parse_stage_cuts_a_long_document_into_token_chunks(tmp_path, model_dir):
    from sqlalchemy import select

    from memo import catalog
    from memo.db import Chunk, Database, Job
    from memo.pipeline import Context, stage_parse
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, chunk={"tokens": 128, "token_overlap": 24, "tokenizer": str(model_dir)})
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        coll = catalog.create_collection(s, "c")
        job_id = catalog.add_document(s, settings, coll.id, "long.txt", _long_document(40).encode()).job.id
    stage_parse(Context(db, settings), job_id)
    count = token_counter(str(model_dir))
    with db.session() as s:
        chunks = s.scalars(select(Chunk.text).order_by(Chunk.seq)).all()
        stats = s.get(Job, job_id).stats["parse"]
    assert len(chunks) == stats["chunks"] > 5
    assert all(count(c) <= 128 for c in chunks)
    assert stats["tokens"] == count(_long_document(40))
    db.dispose()


def test_token_counter_loads_the_tokenizer_when_threads_race_for_it(model_dir):
    # a batch chunks its documents on several threads; in a fresh process they all reach transformers' lazy import
    # at once, and unguarded all but one fell back to approximate counts
    code = (
        "import sys, threading\n"
        "from memo.ingest.chunk import approx_tokens, token_counter\n"
        "got = []\n"
        "ts = [threading.Thread(target=lambda: got.append(token_counter(sys.argv[1]))) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "assert len(got) == 8 and all(c is got[0] for c in got) and got[0] is not approx_tokens, got\n"
    )
    subprocess.run([sys.executable, "-c", code, str(model_dir)], check=True, timeout=120)


def test_token_counter_counts_as_transformers_does_without_importing_torch(model_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    count = token_counter(str(model_dir))
    texts = [line for f in sorted((REPO / "samples").rglob("*.*")) for line in f.read_text().splitlines() if line]
    texts += [_long_document(5), "Zorblax naïve café – 91 € per diem?\n\tTabs  and  spaces."]
    assert len(texts) > 20
    assert [count(t) for t in texts] == [len(hf(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # the gateway counts usage with it: a fresh process that counts has not imported torch
    code = (
        "import sys\n"
        "from memo.ingest.chunk import approx_tokens, token_counter\n"
        "count = token_counter(sys.argv[1])\n"
        "assert count is not approx_tokens and count('hello world') == 2\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, str(model_dir)], check=True, timeout=120)
