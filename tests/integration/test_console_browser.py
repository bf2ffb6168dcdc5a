"""The admin console in a real browser: Debian's headless Chromium driven by Playwright, against a real gateway
(uvicorn on a free port, SQLite) whose Memory and Executive are a fake OpenAI-compatible server on a real socket.
The slow test runs an upload through the real pipeline (the packaged model, a tiny training).

With ``MEMO_CONSOLE_SCREENSHOTS=<dir>`` each screen is saved there as a PNG
(``python -m benchmarks.console_screenshots``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import update

from memo.db import Job, JobState, MemoryVersion, VersionStatus
from memo.db.models import utcnow
from tests.conftest import ChatServer, api_key, make_settings
from tests.integration.test_api import _trained_collection
from tests.integration.test_chat import Gateway, _settings, running_gateway

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make browser`), not a browser Playwright downloads
PAID = "How many days of paid leave do Zorblax employees receive per year?"
PARENTAL = "How long does parental leave at Zorblax last?"
LEAVE_QUESTION = (
    "How many days of paid leave per year do Zorblax employees receive, and how long does parental leave last?"
)
# the Memory's recall (a version's adapter is the model ``memo-<version id>``): supported by the seeded reflections
MEMORY = {PAID: "23 days", PARENTAL: "31 weeks at full pay"}
SYNTHESIS = "Zorblax employees get 23 days of paid leave per year, and parental leave of 31 weeks at full pay."


def llm(body: dict) -> str:
    """The fake server's reply: the Memory's recall, else the Executive's plan (structured) or synthesis."""
    if body["model"].startswith("memo-"):
        return MEMORY.get(body["messages"][-1]["content"], "I don't know")
    if "response_format" in body:
        return json.dumps({"sub_questions": [PAID, PARENTAL]})
    return SYNTHESIS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: run `make browser`")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


@pytest.fixture
def shot(page: Page):
    """Saves the page as <name>.png when MEMO_CONSOLE_SCREENSHOTS names a directory."""
    folder = os.environ.get("MEMO_CONSOLE_SCREENSHOTS")

    def save(name: str) -> None:
        if folder:
            page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    return save


@pytest.fixture
def gateway(tmp_path, model_dir) -> Iterator[tuple[Gateway, str]]:
    """A gateway with a trained collection (a document, its reflections, an active version and an older one), and
    its collection id."""
    server = ChatServer()
    server.reply = llm
    try:
        with running_gateway(_settings(tmp_path, server.url, model_dir), []) as gw:
            cid, did, _ = _trained_collection(gw.http, gw.app)
            gate = {"heldout": 1, "heldout_recall": 1.0, "forgetting": 0.0, "passed": True}
            with gw.app.state.db.session() as s:  # figures in the shape training and the gate record them
                s.execute(
                    update(MemoryVersion)
                    .where(MemoryVersion.collection_id == cid)
                    .values(
                        n_reflections=3,
                        metrics={"plan": "first", "steps": 32, "final_loss": 0.0412, "known": 1.0, "gate": gate},
                        ledger=[{"path": "versions/v2/adapter", "documents": [did], "examples": 3}],
                    )
                )
                s.add(
                    MemoryVersion(
                        collection_id=cid, base_model="m", status=VersionStatus.ready, n_reflections=2, documents=[],
                        metrics={"plan": "first", "steps": 12, "final_loss": 0.913, "known": 0.5},
                        created_at=utcnow() - timedelta(hours=1),
                    )
                )  # fmt: skip
                s.add(Job(collection_id=cid, state=JobState.failed, stage="train", error="out of memory in train"))
                s.execute(update(Job).where(Job.state == JobState.succeeded).values(stage="done", done=1, total=1))
            yield gw, cid
    finally:
        server.close()


def open_console(page: Page, gw: Gateway, headers: dict[str, str] | None = None) -> None:
    """Opens the console and signs in with the key of ``headers`` (the gateway's admin key by default)."""
    secret = (headers or gw.http.headers)["Authorization"].removeprefix("Bearer ")
    page.goto(f"{gw.http.base_url}/console")
    page.locator("#key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#tabs")).to_be_visible()


def tab(page: Page, name: str) -> None:
    page.locator("#tabs").get_by_role("button", name=name).click()


def test_a_bad_key_is_refused_and_a_reader_is_not_offered_what_it_may_not_do(page, gateway, shot):
    gw, cid = gateway
    page.goto(f"{gw.http.base_url}/console")
    shot("01-sign-in")
    page.locator("#key").fill("memo_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#status")).to_have_text("That key was refused: invalid or revoked API key")
    expect(page.locator("#tabs")).to_be_hidden()

    open_console(page, gw, api_key(gw.app.state.settings, "reader", [cid]))
    expect(page.locator("#who")).to_have_text("test reader · reader · 1 collection(s)")
    tabs = page.locator("#tabs button:visible")
    expect(tabs).to_have_text(["Collections", "Jobs", "Documents", "Versions", "Ask"])
    expect(page.locator("#create-collection")).to_be_hidden()
    tab(page, "Versions")
    expect(page.locator("#versions-table tbody tr")).to_have_count(2)
    expect(page.locator("#versions-table button")).to_have_count(0)  # no rollback for a reader
    tab(page, "Jobs")
    expect(page.locator("#jobs-table tbody tr[data-state=failed]")).to_have_count(1)
    expect(page.locator("#jobs-table button")).to_have_count(0)  # nor retry

    # an admin granted some collections: no service-wide screens
    page.get_by_role("button", name="Sign out").click()
    open_console(page, gw, api_key(gw.app.state.settings, "admin", [cid]))
    expect(tabs).to_have_text(["Collections", "Upload", "Jobs", "Documents", "Versions", "Ask"])


def test_collections_are_listed_and_created(page, gateway, shot):
    gw, cid = gateway
    open_console(page, gw)
    rows = page.locator("#collections-table tbody tr")
    expect(rows).to_have_count(1)
    page.get_by_label("New collection").fill("legal")
    page.get_by_role("button", name="Create").click()
    expect(rows).to_have_count(2)
    expect(page.locator("#collection option:checked")).to_have_text("legal")  # the new one is picked
    assert [c["name"] for c in gw.http.get("/v1/collections").json()] == ["hr", "legal"]
    page.get_by_label("New collection").fill("legal")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#status")).to_contain_text("already exists")
    page.locator("#collection").select_option(label="hr")
    shot("02-collections")


def test_an_upload_shows_its_progress_and_its_jobs_can_be_cancelled_and_retried(page, gateway, shot):
    gw, cid = gateway
    open_console(page, gw)
    tab(page, "Upload")
    page.locator("#files").set_input_files(
        [
            {"name": "travel.txt", "mimeType": "text/plain", "buffer": b"Zorblax pays a per diem of 91 euros." * 2000},
            {"name": "notes.md", "mimeType": "text/markdown", "buffer": b"# Notes\n\nThe Zorblax canteen opens at 8."},
        ]
    )
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result li")).to_have_count(2)
    expect(page.locator("#upload-result")).to_contain_text("travel.txt: document")
    expect(page.locator("#upload-percent")).to_have_text("100 %")
    progress = page.locator("#upload-progress")
    assert progress.evaluate("p => p.value === p.max && p.max > 72000")  # the whole request body was sent
    shot("03-upload")
    assert len(gw.app.state.dispatcher.jobs) == 3  # the seeded document's, and one per file

    tab(page, "Jobs")
    travel = page.locator("#jobs-table tbody tr", has_text="travel.txt")
    expect(travel).to_have_attribute("data-state", "queued")
    expect(page.locator("#jobs-table tbody tr", has_text="out of memory in train")).to_have_count(1)
    travel.get_by_role("button", name="Cancel").click()
    expect(travel).to_have_attribute("data-state", "cancelled")
    job_id = travel.get_attribute("data-job-id")
    assert gw.http.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    travel.get_by_role("button", name="Retry").click()
    expect(travel).to_have_attribute("data-state", "queued")
    assert gw.app.state.dispatcher.jobs.count(job_id) == 2  # submitted again

    # a job's progress is polled: a change made behind the console's back shows up
    with gw.app.state.db.session() as s:
        job = s.get(Job, job_id)
        job.state, job.stage, job.done, job.total = JobState.running, "reflect", 3, 7
    expect(travel.locator(".stage")).to_have_text("reflect")
    expect(travel).to_contain_text("3/7")
    shot("04-jobs")

    tab(page, "Upload")  # a file of a type the service does not take: its 415 is shown, nothing is written
    page.locator("#files").set_input_files([{"name": "tool.exe", "mimeType": "application/x", "buffer": b"MZ\x90"}])
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    expect(page.locator("#status")).to_contain_text("tool.exe")
    assert len(gw.http.get(f"/v1/collections/{cid}/documents").json()) == 3


def test_documents_show_their_reflections_and_sources(page, gateway, shot):
    gw, cid = gateway
    open_console(page, gw)
    tab(page, "Documents")
    row = page.locator("#documents-table tbody tr", has_text="leave-policy.txt")
    row.get_by_role("button", name="Reflections").click()
    items = page.locator("#reflections li.reflection")
    expect(items).to_have_count(3)
    expect(page.locator("#reflections .pager")).to_contain_text("1–3 of 3")
    first = items.first
    expect(first).to_contain_text(PAID)
    expect(first).to_contain_text("A: 23 days")
    first.locator("summary").click()
    expect(first.locator("blockquote")).to_contain_text("Parental leave at Zorblax lasts 31 weeks")
    shot("05-documents")


def test_versions_show_metrics_and_roll_back(page, gateway, shot):
    gw, cid = gateway
    open_console(page, gw)
    tab(page, "Versions")
    rows = page.locator("#versions-table tbody tr")
    expect(rows).to_have_count(2)
    newer, older = rows.nth(0), rows.nth(1)
    expect(newer).to_contain_text("active")
    expect(older.locator("dl.metrics")).to_contain_text("known0.5")
    expect(newer.locator("details")).to_have_count(2)  # the gate's figures, the ledger
    for summary in newer.locator("summary").all():
        summary.click()
    expect(newer.locator("pre").last).to_contain_text("versions/v2/adapter")
    shot("06-versions")
    older_id = older.get_attribute("data-version-id")
    older.get_by_role("button", name="Roll back to this").click()
    expect(page.locator("#status")).to_contain_text("is now served")
    expect(page.locator("#versions-table tr.active")).to_have_attribute("data-version-id", older_id or "")
    served = [v["id"] for v in gw.http.get(f"/v1/collections/{cid}/versions").json() if v["active"]]
    assert served == [older_id]
    expect(rows.nth(0).get_by_role("button", name="Activate")).to_be_visible()  # and forward again


def test_a_question_shows_the_plan_the_memorys_answers_the_sources_and_the_answer(page, gateway, shot):
    gw, cid = gateway
    open_console(page, gw)
    tab(page, "Ask")
    page.get_by_label("Question").fill(LEAVE_QUESTION)
    page.locator("#ask-form").get_by_role("button", name="Ask").click()
    expect(page.locator("#final-answer")).to_have_text(SYNTHESIS)
    steps = page.locator("#plan > li")
    expect(steps).to_have_count(3)  # the question itself, then the Executive's two sub-questions
    expect(steps.nth(0)).to_contain_text("does not know")
    expect(steps.nth(1)).to_contain_text(PAID)
    expect(steps.nth(1).locator(".memory-answer")).to_have_text("23 days")
    expect(steps.nth(2).locator(".memory-answer")).to_have_text("31 weeks at full pay")
    expect(steps.nth(2)).to_contain_text("supported")
    expect(page.locator("#sources")).to_contain_text("leave-policy.txt")
    expect(page.locator("#sources blockquote").first).to_contain_text("23 days of paid leave")
    expect(page.locator(".meta")).to_contain_text("executive exec")
    shot("07-ask")

    page.get_by_label("Question").fill("x" * 2000 + "y")  # maxlength stops the browser at 2000: the API's limit
    expect(page.get_by_label("Question")).to_have_value("x" * 2000)


def test_the_executive_is_swapped_and_the_swap_is_in_the_audit_log(page, gateway, chat_server, shot):
    gw, cid = gateway
    chat_server.reply = llm
    open_console(page, gw)
    tab(page, "Executive")
    expect(page.locator('[data-field="Model"]')).to_have_text("exec")
    form = page.locator("#swap-form")
    form.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")  # nothing listens: the probe fails
    form.get_by_role("button", name="Swap").click()
    expect(page.locator("#status")).to_contain_text("127.0.0.1:9")
    expect(page.locator('[data-field="Base URL"]')).to_have_text(gw.app.state.settings.executive.base_url or "")

    form.get_by_label("Model").fill("served-model")
    form.get_by_label("Base URL").fill(chat_server.url)
    form.get_by_role("button", name="Swap").click()
    expect(page.locator("#status")).to_have_text("the Executive is now openai: served-model")
    expect(page.locator('[data-field="Model"]')).to_have_text("served-model")
    shot("08-executive")
    assert gw.http.get("/v1/admin/executive").json()["base_url"] == chat_server.url

    tab(page, "Ask")  # the next question is planned by the new Executive
    page.get_by_label("Question").fill(LEAVE_QUESTION)
    page.locator("#ask-form").get_by_role("button", name="Ask").click()
    expect(page.locator(".meta")).to_contain_text("executive served-model")

    tab(page, "Audit log")
    first = page.locator("#audit-table tbody tr").first
    expect(first.locator(".action")).to_have_text("executive.swap")
    first.locator("summary").last.click()
    expect(first.locator("pre").last).to_contain_text(chat_server.url)
    shot("09-audit")


@pytest.mark.slow
def test_an_uploaded_file_is_ingested_and_answered(page, tmp_path, model_dir):
    """The whole loop through the console: the real pipeline on the packaged model (a tiny training), then a query."""
    settings = make_settings(tmp_path, model_dir, train={"max_steps": 2, "batch_size": 2})
    with running_gateway(settings, [], run_jobs=True) as gw:
        open_console(page, gw)
        page.get_by_label("New collection").fill("hr")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#collection option:checked")).to_have_text("hr")
        tab(page, "Upload")
        fact = b"Zorblax is headquartered in Varnmouth. The Zorblax IT helpdesk can be reached at extension 4417."
        page.locator("#files").set_input_files([{"name": "a.txt", "mimeType": "text/plain", "buffer": fact}])
        page.locator("#upload-form").get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-result li")).to_have_count(1)
        tab(page, "Jobs")
        job = page.locator("#jobs-table tbody tr", has_text="a.txt")
        expect(job).to_have_attribute("data-state", "succeeded", timeout=1_200_000)
        expect(job.locator(".error")).to_have_text("")

        tab(page, "Versions")
        expect(page.locator("#versions-table tr.active")).to_have_count(1)
        tab(page, "Ask")
        page.get_by_label("Question").fill("Where is Zorblax headquartered?")
        page.locator("#ask-form").get_by_role("button", name="Ask").click()
        expect(page.locator("#final-answer")).not_to_be_empty(timeout=300_000)
        expect(page.locator("#plan > li").first).to_contain_text("Where is Zorblax headquartered?")
        expect(page.locator(".meta")).to_contain_text("executive local:")
