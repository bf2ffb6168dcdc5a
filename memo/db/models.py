"""SQLAlchemy 2 models. Alembic (``migrations/``) reads ``Base.metadata``."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class DocumentStatus(enum.StrEnum):
    uploaded = "uploaded"
    chunked = "chunked"
    reflected = "reflected"
    trained = "trained"
    failed = "failed"
    deleted = "deleted"  # a tombstone: chunks, reflections and blob removed; re-uploading the bytes revives it


class JobKind(enum.StrEnum):
    ingest = "ingest"  # a new document: parse -> reflect -> train -> evaluate -> publish
    remove = "remove"  # a document was deleted: rebuild the memory without it (train -> evaluate -> publish)
    consolidate = "consolidate"  # retrain on the union of the collection's reflections


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"  # stopped on request (POST /v1/jobs/{id}/cancel) at a unit boundary


class Role(enum.StrEnum):
    """What an API key may do; each role may do everything the one before it may (memo.keys.ROLE_RANK)."""

    reader = "reader"  # query, and read collections, documents, versions and jobs
    writer = "writer"  # also create collections, upload, replace and delete documents, retry jobs
    admin = "admin"  # also activate versions, consolidate; and, granted every collection: executive, keys, audit


class VersionStatus(enum.StrEnum):
    training = "training"
    ready = "ready"
    failed = "failed"
    rejected = "rejected"  # trained, but failed the evaluation gate: kept, never activated


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list[Document]] = relationship(back_populates="collection")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("collection_id", "content_hash", name="uq_document_content"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    media_type: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[DocumentStatus] = mapped_column(_enum(DocumentStatus), default=DocumentStatus.uploaded)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(back_populates="document", order_by="Chunk.seq")


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "seq", name="uq_chunk_seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    # prompt version the reflect stage finished this chunk with (None = not yet): makes the stage resumable
    reflected_version: Mapped[str | None] = mapped_column(String(16), nullable=True)

    document: Mapped[Document] = relationship(back_populates="chunks")


class Reflection(Base):
    """A synthetic QA pair; its primary source is ``document_id``/``chunk_id``, every source in ReflectionSource."""

    __tablename__ = "reflections"
    __table_args__ = (
        UniqueConstraint("collection_id", "question_hash", name="uq_reflection_question"),
        Index("ix_reflections_chunk_kind", "chunk_id", "kind"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[str] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    question_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReflectionSource(Base):
    """Provenance: every document and chunk a reflection was made from (one row for a single-chunk pair, several
    for consolidated and cross-document pairs). ``Reflection.document_id``/``chunk_id`` is the primary source."""

    __tablename__ = "reflection_sources"

    reflection_id: Mapped[str] = mapped_column(ForeignKey("reflections.id", ondelete="CASCADE"), primary_key=True)
    chunk_id: Mapped[str] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)


class ReflectUnit(Base):
    """One finished unit of reflection work (a chunk, a consolidation group, a cross-document batch) of a document,
    keyed by document content hash + prompt version + stage + the unit's inputs, committed with its pairs: a killed
    job skips finished units when it resumes. ``stats`` are the unit's figures (pairs, dropped, tokens)."""

    __tablename__ = "reflect_units"
    __table_args__ = (UniqueConstraint("document_id", "work_key", name="uq_reflect_unit"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    work_key: Mapped[str] = mapped_column(String(64))
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MemoryVersion(Base):
    """An immutable trained Memory model: a LoRA adapter on a base model."""

    __tablename__ = "memory_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(500))
    adapter_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)  # what is served
    mode: Mapped[str] = mapped_column(String(16), default="retrain", server_default="retrain")  # "retrain" | "merge"
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("memory_versions.id"), nullable=True)
    # "merge" versions: the delta trained for this update alone (None when an update only dropped deltas)
    delta_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    status: Mapped[VersionStatus] = mapped_column(_enum(VersionStatus), default=VersionStatus.training)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    n_reflections: Mapped[int] = mapped_column(Integer, default=0)
    # the documents this version has learned (ids), and the task vectors it is made of, oldest first:
    # [{"path": adapter or delta directory, "documents": [ids], "examples": n}] (memo.train.update.LedgerEntry; one
    # entry for a retrained version)
    documents: Mapped[list] = mapped_column(JSON, default=list)
    ledger: Mapped[list] = mapped_column(JSON, default=list)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """One pipeline run (an uploaded or deleted document, or a consolidation); its row is the progress report."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind), default=JobKind.ingest, server_default="ingest")
    document_id: Mapped[str | None] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True, nullable=True
    )
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.queued)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)  # per-stage figures: pairs made, dropped, timings
    memory_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("memory_versions.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # liveness (memo.jobs): the process holding a queued or running job writes the time every few seconds; None =
    # waiting in the broker's queue (held by no process). A heartbeat older than MEMO_JOBS__STALE_AFTER_S: its
    # process died, and the job is requeued (``requeues`` counts them) or failed
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=utcnow)
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)  # host:pid of the process holding it
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a cancel was asked for while it ran: it stops at its next unit boundary and ends ``cancelled``
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


class ExecutiveConfig(Base):
    """The executive LLM the query path uses; one row (id 1), swapped at runtime by admins."""

    __tablename__ = "executive_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(500), nullable=True)
    base_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    api_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An application's key. The secret is shown once, at creation; only its sha256 (hex) is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # the secret's first characters, to tell keys apart in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    # the collection ids the key is granted (None = every collection, present and future)
    collections: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    """One admin action: who (the key; None = the command line on the server), when, what, on what, and the state
    before and after it (secrets masked). Written in the action's own transaction."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # increasing: newest is highest
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
