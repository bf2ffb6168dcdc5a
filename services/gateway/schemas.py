"""Request and response models of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from memo.catalog import clean_text


def _text(value: str) -> str:
    if not clean_text(value):
        raise ValueError("control characters (NUL included), lone surrogates and bidirectional overrides are refused")
    return value


def _name(value: str) -> str:
    if not clean_text(value, lines=False):
        raise ValueError("a name holds no control characters, line breaks, lone surrogates or bidirectional overrides")
    return value


Text = Annotated[str, AfterValidator(_text)]  # free text: a question, a message
Name = Annotated[str, AfterValidator(_name)]  # one line: a name, an id, a URL


class CollectionIn(BaseModel):
    name: Name = Field(min_length=1, max_length=200)


class CollectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: datetime


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    collection_id: str
    filename: str
    media_type: str
    content_hash: str
    size_bytes: int
    status: str
    created_at: datetime


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    collection_id: str
    kind: str
    document_id: str | None
    state: str
    stage: str
    done: int
    total: int
    error: str | None
    stats: dict[str, Any]
    memory_version_id: str | None
    created_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None  # last sign of life of the process holding it (None: waiting in the broker)
    runner: str | None  # host:pid of that process
    requeues: int  # times it was requeued after its process died
    cancel_requested: bool


class UploadOut(BaseModel):
    document: DocumentOut
    job: JobOut | None
    duplicate: bool


class UploadsOut(BaseModel):
    uploads: list[UploadOut]  # one per file part, in the request's order


class RemovalOut(BaseModel):
    document: DocumentOut
    job: JobOut | None  # the rebuild without the document (None: no active version had learned it)


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    collection_id: str
    base_model: str
    adapter_path: str | None
    mode: str
    parent_id: str | None
    status: str
    active: bool
    n_reflections: int
    documents: list[str] | None
    ledger: list[dict[str, Any]] | None
    metrics: dict[str, Any]
    created_at: datetime

    @field_validator("metrics")
    @classmethod
    def _summary(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        # the per-reflection training losses (what the next update rehearses) would make a large collection's
        # version list huge: they stay in the database
        return {k: v for k, v in metrics.items() if k not in ("pair_losses", "unknown_ids")}


class QueryIn(BaseModel):
    collection_id: Name = Field(max_length=200)
    question: Text = Field(min_length=1, max_length=2000)


class CitedReflectionOut(BaseModel):
    """A reflection (a question -> answer pair the memory was trained on) that supports the answer."""

    question: str
    answer: str
    score: float


class PassageOut(BaseModel):
    """A chunk of the document that the supporting reflections were made from."""

    chunk_id: str
    text: str
    reflections: list[CitedReflectionOut]


class SourceOut(BaseModel):
    """A document behind the answer (title = its file name), with its passages; ``score`` ranks the sources."""

    document_id: str
    title: str
    score: float
    passages: list[PassageOut]


class TraceStep(BaseModel):
    sub_question: str
    memory_answer: str
    idk: bool
    supported: bool  # the collection's reflections support this answer (see sources)
    sources: list[SourceOut]
    # the Memory rated this many reflections about the question; chosen: memory_answer is the one it rated best
    # (else none rated high enough, and memory_answer is its own greedy answer)
    chosen_from: int = 0
    chosen: bool = False
    # the best reflection's rating: the Memory's mean log-probability per token of its answer as the reply to the
    # question minus that as the reply to the reflection's own question, plus 3 x the log of its share of the
    # question; the choice is the answer from -3.5 up
    rating: float | None = None


class AnswerOut(BaseModel):
    """What the service says about an answer besides its text: in POST /v1/query's answer and, as extra fields, in
    the chat API's completion."""

    # true: no answer of the memory is supported by the collection's documents, and the answer says so (a fixed text)
    abstained: bool
    sources: list[SourceOut]  # the documents and passages behind the answer, best first (empty when abstained)
    executive: str
    memory: str
    memory_version_id: str
    trace: list[TraceStep]


class QueryOut(AnswerOut):
    question: str
    answer: str


class ExecutiveIn(BaseModel):
    backend: Literal["local", "openai"]
    model: Name | None = Field(default=None, max_length=500)
    base_url: Name | None = Field(default=None, max_length=1000)
    api_key: Name | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _check(self) -> ExecutiveIn:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("an 'openai' executive needs base_url and model")
        return self


class ExecutiveOut(BaseModel):
    backend: str
    model: str | None
    base_url: str | None
    has_api_key: bool


class KeyIn(BaseModel):
    name: Name = Field(min_length=1, max_length=200)
    role: Literal["reader", "writer", "admin"]
    # the collection ids the key may use; omitted or null = every collection (present and future)
    collections: list[Annotated[Name, Field(max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )


class KeyOut(BaseModel):
    """A key as listed: never its secret (nor its hash); ``prefix`` is the secret's start, to tell keys apart."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    prefix: str
    role: str
    collections: list[str] | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreatedOut(KeyOut):
    secret: str  # shown this once: send it as "Authorization: Bearer <secret>"


class AuditOut(BaseModel):
    """An admin action: the key that did it (null: the command line on the server), what, on what, before/after."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    key_id: str | None
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class WhoAmIOut(BaseModel):
    """The key a request is made with: what the console offers depends on it."""

    id: str
    name: str
    role: str
    collections: list[str] | None  # the granted collection ids; null = every collection


class ReflectionSourceOut(BaseModel):
    """A chunk a reflection was made from."""

    document_id: str
    filename: str
    chunk_id: str
    seq: int
    text: str


class ReflectionOut(BaseModel):
    id: str
    kind: str
    question: str
    answer: str
    created_at: datetime
    sources: list[ReflectionSourceOut]


class ReflectionsOut(BaseModel):
    """A page of a document's reflections, oldest first; ``total``: all of them."""

    total: int
    offset: int
    limit: int
    items: list[ReflectionOut]
