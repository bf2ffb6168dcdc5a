"""The REST API's contract, on SQLite, with a recording dispatcher (the pipeline has its own tests). Requests are
made with an admin key; what each role may do is tested in test_keys."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from memo.db import Database, Document, Job
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings


class RecordingDispatcher:
    def __init__(self) -> None:
        self.jobs: list[str] = []

    def submit(self, job_id: str) -> None:
        self.jobs.append(job_id)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path, max_upload_bytes=1000)
    headers = api_key(settings)
    app = create_app(settings)
    with TestClient(app, headers=headers) as client:
        app.state.dispatcher = RecordingDispatcher()
        yield client, app, settings


def _counts(app) -> tuple[int, int]:
    db: Database = app.state.db
    with db.session() as s:
        return s.scalar(select(func.count(Document.id))), s.scalar(select(func.count(Job.id)))


def _blobs(settings) -> list:
    return list(settings.blob_dir.rglob("*")) if settings.blob_dir.exists() else []


def test_collections_create_list_get(env):
    client, _, _ = env
    r = client.post("/v1/collections", json={"name": "hr"})
    assert r.status_code == 201
    cid = r.json()["id"]
    assert client.post("/v1/collections", json={"name": "hr"}).status_code == 409
    assert client.post("/v1/collections", json={"name": ""}).status_code == 422
    assert [c["name"] for c in client.get("/v1/collections").json()] == ["hr"]
    assert client.get(f"/v1/collections/{cid}").json()["name"] == "hr"
    r = client.get("/v1/collections/nope")
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_upload_starts_a_job_and_duplicates_do_not(env):
    client, app, _ = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    files = {"file": ("policy.md", b"# Leave\n\nStaff get 23 days of leave.", "text/markdown")}
    r = client.post(f"/v1/collections/{cid}/documents", files=files)
    assert r.status_code == 202, r.text
    [body] = r.json()["uploads"]
    assert body["duplicate"] is False and body["document"]["status"] == "uploaded"
    job_id = body["job"]["id"]
    assert app.state.dispatcher.jobs == [job_id]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["document_id"] == body["document"]["id"]

    r = client.post(f"/v1/collections/{cid}/documents", files=files)
    [again] = r.json()["uploads"]
    assert r.status_code == 200 and again["duplicate"] is True and again["job"] is None
    assert app.state.dispatcher.jobs == [job_id]
    assert _counts(app) == (1, 1)
    assert len(client.get(f"/v1/collections/{cid}/documents").json()) == 1
    assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # only failed jobs


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("slides.pptx", b"PK\x03\x04", 415, "unsupported file type"),
        ("empty.txt", b"   \n", 422, "empty"),
        ("binary.txt", b"\xff\xfe\xfa", 422, "UTF-8"),
        ("big.txt", b"x" * 1001, 413, "exceeds"),
    ],
)
def test_bad_uploads_are_refused_and_change_nothing(env, name, data, status, message):
    client, app, settings = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    r = client.post(f"/v1/collections/{cid}/documents", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status and message in r.json()["detail"]
    assert _counts(app) == (0, 0) and _blobs(settings) == [] and app.state.dispatcher.jobs == []


def test_upload_to_unknown_collection_is_404_and_changes_nothing(env):
    client, app, settings = env
    r = client.post("/v1/collections/missing/documents", files={"file": ("a.txt", b"Acme sells boxes.", "text/plain")})
    assert r.status_code == 404 and "collection missing not found" in r.json()["detail"]
    assert _counts(app) == (0, 0) and _blobs(settings) == []


def test_query_needs_a_trained_collection(env):
    client, _, _ = env
    assert client.post("/v1/query", json={"collection_id": "missing", "question": "Hi?"}).status_code == 404
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    r = client.post("/v1/query", json={"collection_id": cid, "question": "Hi?"})
    assert r.status_code == 409 and "no trained memory" in r.json()["detail"]
    assert client.post("/v1/query", json={"collection_id": cid, "question": ""}).status_code == 422
    assert client.get("/v1/jobs/nope").status_code == 404


def test_admin_executive_swap_persists_and_never_shows_the_api_key(env, tmp_path, chat_server):
    client, _, settings = env
    assert client.get("/v1/admin/executive").json()["backend"] == "local"
    body = {"backend": "openai", "base_url": chat_server.url, "model": "big-exec", "api_key": "sk-provider-secret"}
    r = client.put("/v1/admin/executive", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"backend": "openai", "model": "big-exec", "base_url": chat_server.url, "has_api_key": True}
    assert chat_server.seen[-1]["authorization"] == "Bearer sk-provider-secret"  # the probe used the new key
    bad = client.put("/v1/admin/executive", json={"backend": "openai", "model": "x"})
    assert bad.status_code == 422
    missing = client.put("/v1/admin/executive", json={"backend": "local", "model": str(tmp_path)})
    assert missing.status_code == 422 and "no Hugging Face model" in missing.json()["detail"]
    # persisted: a new app on the same database sees the swap; the secret is in no response
    with TestClient(create_app(settings), headers=client.headers) as other:
        got = other.get("/v1/admin/executive")
        assert got.json()["model"] == "big-exec"
        audit = other.get("/v1/admin/audit")
    assert all("sk-provider-secret" not in x.text for x in (r, got, audit))
    [swap] = [e for e in audit.json() if e["action"] == "executive.swap"]
    assert swap["before"] == {"backend": "local", "model": None, "base_url": None, "api_key": None}
    assert swap["after"] == {"backend": "openai", "model": "big-exec", "base_url": chat_server.url, "api_key": "***"}


def test_activate_rolls_back_to_an_earlier_version(env):
    from memo.db import MemoryVersion, VersionStatus

    client, app, _ = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    other = client.post("/v1/collections", json={"name": "other"}).json()["id"]
    with app.state.db.session() as s:
        old = MemoryVersion(collection_id=cid, base_model="m", status=VersionStatus.ready)
        new = MemoryVersion(collection_id=cid, base_model="m", status=VersionStatus.ready, active=True)
        broken = MemoryVersion(collection_id=cid, base_model="m", status=VersionStatus.failed)
        s.add_all([old, new, broken])
    r = client.post(f"/v1/collections/{cid}/versions/{old.id}/activate")
    assert r.status_code == 200 and r.json()["active"] is True
    assert {v["id"]: v["active"] for v in client.get(f"/v1/collections/{cid}/versions").json()} == {
        old.id: True,
        new.id: False,
        broken.id: False,
    }
    assert client.post(f"/v1/collections/{cid}/versions/{broken.id}/activate").status_code == 409
    assert client.post(f"/v1/collections/{other}/versions/{old.id}/activate").status_code == 404
    assert client.post(f"/v1/collections/{cid}/versions/nope/activate").status_code == 404
    assert [v["active"] for v in client.get(f"/v1/collections/{cid}/versions").json()].count(True) == 1


def test_openapi_docs_are_served(env):
    client, _, _ = env
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/query", "/v1/collections/{collection_id}/documents", "/v1/admin/executive"} <= set(paths)


def _upload(client, cid: str, name: str, data: bytes) -> dict:
    r = client.post(f"/v1/collections/{cid}/documents", files={"file": (name, data, "text/plain")})
    assert r.status_code == 202, r.text
    return r.json()["uploads"][0]


def _finish(app, job_id: str) -> None:
    from memo.db import JobState

    with app.state.db.session() as s:
        s.get(Job, job_id).state = JobState.succeeded


def test_delete_document_removes_its_data_and_refuses_bad_requests(env):
    client, app, settings = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    up = _upload(client, cid, "a.txt", b"Zorblax pays travel per diem of 91 euros.")
    did = up["document"]["id"]
    r = client.delete(f"/v1/collections/{cid}/documents/{did}")
    assert r.status_code == 409 and "retry when it has finished" in r.json()["detail"]  # its job is still queued
    _finish(app, up["job"]["id"])
    assert client.delete(f"/v1/collections/{cid}/documents/nope").status_code == 404
    assert client.delete(f"/v1/collections/nope/documents/{did}").status_code == 404
    assert len(_blobs(settings)) == 2  # the blob and its folder

    r = client.delete(f"/v1/collections/{cid}/documents/{did}")
    assert r.status_code == 202, r.text
    assert r.json()["document"]["status"] == "deleted"
    assert r.json()["job"] is None  # no memory version had learned it: nothing to rebuild
    assert [f for f in _blobs(settings) if f.is_file()] == []  # the file is gone
    assert client.delete(f"/v1/collections/{cid}/documents/{did}").status_code == 404  # already deleted
    # uploading the same bytes again revives the document with a new job
    again = _upload(client, cid, "a2.txt", b"Zorblax pays travel per diem of 91 euros.")
    assert again["document"]["id"] == did and again["document"]["status"] == "uploaded"
    assert again["job"]["kind"] == "ingest"


def test_replace_document_with_a_bad_file_changes_nothing(env):
    client, app, settings = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    up = _upload(client, cid, "a.txt", b"Zorblax pays travel per diem of 91 euros.")
    _finish(app, up["job"]["id"])
    did = up["document"]["id"]
    before = _counts(app)
    r = client.put(f"/v1/collections/{cid}/documents/{did}", files={"file": ("a.pptx", b"PK", "x")})
    assert r.status_code == 415
    r = client.put(f"/v1/collections/{cid}/documents/{did}", files={"file": ("a.txt", b"", "text/plain")})
    assert r.status_code == 422
    assert _counts(app) == before
    assert client.get(f"/v1/collections/{cid}/documents").json()[0]["status"] == "uploaded"

    r = client.put(f"/v1/collections/{cid}/documents/{did}", files={"file": ("a.txt", b"Per diem is 95 euros.", "x")})
    assert r.status_code == 202, r.text
    docs = {d["id"]: d["status"] for d in client.get(f"/v1/collections/{cid}/documents").json()}
    assert docs[did] == "deleted" and docs[r.json()["document"]["id"]] == "uploaded"
    assert app.state.dispatcher.jobs[-1] == r.json()["job"]["id"]


def test_consolidate_needs_trained_documents(env):
    client, _, _ = env
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    r = client.post(f"/v1/collections/{cid}/consolidate")
    assert r.status_code == 409 and "no trained documents" in r.json()["detail"]
    assert client.post("/v1/collections/nope/consolidate").status_code == 404


# -- the query path: answers with sources, abstention --------------------------------------------------------------
LEAVE = (
    b"Zorblax employees receive 23 days of paid leave per year. Parental leave at Zorblax lasts 31 weeks at full pay."
)


class ScriptedEngines:
    """The gateway's engines with scripted LLMs: the Memory answers from a dict ("I don't know" otherwise)."""

    def __init__(self, settings, memory_answers: dict[str, str]) -> None:
        from tests.unit.fakes import ScriptedLLM

        self.settings = settings
        self.executive = ScriptedLLM(
            lambda m, t: '{"sub_questions": []}' if "sub-questions" in m[0]["content"] else "FINAL", "exec-A"
        )
        self.memory_llm = ScriptedLLM(lambda m, t: memory_answers.get(m[-1]["content"], "I don't know"), "mem")

    def for_role(self, role):
        return self.executive

    def memory(self, version_id, adapter_path):
        return self.memory_llm

    def scorer(self, version_id, adapter_path):
        return None  # the Memory's own answers only (the choice among reflections: tests/e2e)

    async def aclose(self) -> None:
        pass


def _trained_collection(client, app) -> tuple[str, str, str]:
    """A collection whose document has a chunk, reflections with provenance and an active memory version, as the
    pipeline leaves them (the training itself is replaced by the row)."""
    from memo.db import Chunk, MemoryVersion, Reflection, ReflectionSource, VersionStatus

    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    up = _upload(client, cid, "leave-policy.txt", LEAVE)
    _finish(app, up["job"]["id"])
    did = up["document"]["id"]
    pairs = [
        ("How many days of paid leave do Zorblax employees receive per year?", "23 days"),
        ("What do Zorblax employees receive?", "Zorblax employees receive 23 days of paid leave per year."),
        ("How long does parental leave at Zorblax last?", "31 weeks at full pay"),
    ]
    with app.state.db.session() as s:
        chunk = Chunk(document_id=did, seq=0, text=LEAVE.decode())
        s.add(chunk)
        s.flush()
        for i, (q, a) in enumerate(pairs):
            r = Reflection(
                collection_id=cid, document_id=did, chunk_id=chunk.id, kind="direct", question=q, answer=a,
                question_hash=f"h{i}",
            )  # fmt: skip
            s.add(r)
            s.flush()
            s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=did))
        version = MemoryVersion(
            collection_id=cid, base_model="m", adapter_path="/nowhere", status=VersionStatus.ready, active=True,
            documents=[did],
        )  # fmt: skip
        s.add(version)
        s.flush()
        return cid, did, chunk.id


def test_query_returns_sources_and_abstains_on_what_no_document_supports(env):
    client, app, settings = env
    cid, did, chunk_id = _trained_collection(client, app)
    paid = "How many days of paid leave do Zorblax employees get each year?"
    dental = "What is the Zorblax dental plan deductible?"
    parental = "How much paid leave does a Zorblax employee get per year in days?"
    app.state.engines = ScriptedEngines(settings, {paid: "23 days", dental: "23 days", parental: "31 weeks"})

    r = client.post("/v1/query", json={"collection_id": cid, "question": paid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "23 days" and body["abstained"] is False
    [source] = body["sources"]
    assert (source["document_id"], source["title"]) == (did, "leave-policy.txt")
    [passage] = source["passages"]
    assert passage["chunk_id"] == chunk_id and passage["text"] == LEAVE.decode()
    assert {"question", "answer", "score"} <= set(passage["reflections"][0])
    assert "23 days" in passage["reflections"][0]["answer"]
    [step] = body["trace"]
    assert step["supported"] is True and step["idk"] is False and step["sources"][0]["document_id"] == did
    assert app.state.engines.executive.calls == []  # a supported recall is the answer: no Executive call

    for question in (dental, parental):  # the memory's recall is not what was asked / a look-alike
        body = client.post("/v1/query", json={"collection_id": cid, "question": question}).json()
        assert body["abstained"] is True and body["sources"] == []
        assert body["answer"] == "I don't know: the documents do not answer this."
        assert [(s["supported"], s["sources"]) for s in body["trace"]] == [(False, [])]

    # the document is deleted: until the memory is retrained without it, its old facts are abstained on
    removal = client.delete(f"/v1/collections/{cid}/documents/{did}")
    assert removal.status_code == 202
    body = client.post("/v1/query", json={"collection_id": cid, "question": paid}).json()
    assert body["abstained"] is True and body["sources"] == [] and body["trace"][0]["memory_answer"] == "23 days"

    # it was the collection's last document: its remove job retires the memory (nothing is left to learn from)
    from memo.pipeline import Context, run_pipeline

    run_pipeline(Context(app.state.db, settings), removal.json()["job"]["id"])
    assert client.get(f"/v1/jobs/{removal.json()['job']['id']}").json()["state"] == "succeeded"
    assert [v["active"] for v in client.get(f"/v1/collections/{cid}/versions").json()] == [False]
    r = client.post("/v1/query", json={"collection_id": cid, "question": paid})
    assert r.status_code == 409 and "no trained memory" in r.json()["detail"]


def test_a_query_never_cites_another_collections_documents(env):
    """Collection A's query is answered from A's reflections only: a Memory that recalls collection B's fact (as a
    model trained on both would) finds no support in A, so the answer abstains and no B document is cited."""
    from memo.db import Chunk, MemoryVersion, Reflection, ReflectionSource, VersionStatus

    client, app, settings = env
    hr, hr_doc, _ = _trained_collection(client, app)  # B: the leave policy
    finance = client.post("/v1/collections", json={"name": "finance"}).json()["id"]  # A: travel
    travel = b"Zorblax pays a travel per diem of 91 euros per day."
    up = _upload(client, finance, "travel.txt", travel)
    _finish(app, up["job"]["id"])
    fin_doc = up["document"]["id"]
    with app.state.db.session() as s:
        chunk = Chunk(document_id=fin_doc, seq=0, text=travel.decode())
        s.add(chunk)
        s.flush()
        r = Reflection(
            collection_id=finance, document_id=fin_doc, chunk_id=chunk.id, kind="direct", answer="91 euros",
            question="What travel per diem does Zorblax pay per day?", question_hash="t0",
        )  # fmt: skip
        s.add(r)
        s.flush()
        s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=fin_doc))
        s.add(MemoryVersion(collection_id=finance, base_model="m", adapter_path="/nowhere", status=VersionStatus.ready,
                            active=True, documents=[fin_doc]))  # fmt: skip
    paid = "How many days of paid leave do Zorblax employees get each year?"
    per_diem = "What travel per diem does Zorblax pay per day?"
    app.state.engines = ScriptedEngines(settings, {paid: "23 days", per_diem: "91 euros"})

    leak = client.post("/v1/query", json={"collection_id": finance, "question": paid}).json()
    assert leak["abstained"] is True and leak["sources"] == []
    assert all(step["sources"] == [] for step in leak["trace"])
    assert hr_doc not in str(leak)
    own = client.post("/v1/query", json={"collection_id": finance, "question": per_diem}).json()
    assert own["answer"] == "91 euros" and [s["document_id"] for s in own["sources"]] == [fin_doc]
    # and B still answers it from B's document
    theirs = client.post("/v1/query", json={"collection_id": hr, "question": paid}).json()
    assert theirs["abstained"] is False and [s["document_id"] for s in theirs["sources"]] == [hr_doc]
