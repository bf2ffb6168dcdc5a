"""Service settings, read from the environment (prefix ``MEMO_``) by :func:`get_settings`.

Nested values use a double underscore, e.g. ``MEMO_MEMORY__BACKEND=openai``,
``MEMO_MEMORY__BASE_URL=http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from memo.ingest.archive import MAX_UNPACKED

Backend = Literal["local", "openai"]


class LLMRole(BaseModel):
    """Where one LLM role (generator, memory, executive) runs.

    ``local``: in-process transformers on ``model`` (a Hugging Face directory; unset = the prepared
    default model under the data directory). ``openai``: any OpenAI-compatible server (vLLM, a provider)
    at ``base_url`` serving ``model``.
    """

    backend: Backend = "local"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    max_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=300.0, gt=0)
    # openai backend on vLLM: the requests' scheduling priority (lower is served first; the server must run with
    # --scheduling-policy priority, as deploy/vllm/serve.sh does; 0 = not sent). A generator at 1 on the server the
    # Memory and Executive use at 0 lets queries go ahead of reflecting an upload (results/reliability/load.md)
    priority: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> LLMRole:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("an 'openai' backend needs both base_url and model")
        return self


class ChunkSettings(BaseModel):
    """Chunking for the reflect stage. ``unit=tokens`` (default) measures chunks with the tokenizer of ``tokenizer``
    (unset = the generator's model directory when local, else the memory training base); ``unit=words`` cuts word
    windows of ``words``/``overlap`` (the MeMo paper's unit)."""

    unit: Literal["tokens", "words"] = "tokens"
    tokens: int = Field(default=512, ge=16)
    token_overlap: int = Field(default=64, ge=0)
    tokenizer: str | None = None
    words: int = Field(default=200, ge=10)
    overlap: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ChunkSettings:
        if self.overlap >= self.words or self.token_overlap >= self.tokens:
            raise ValueError("chunk overlap must be smaller than the chunk size")
        return self


REFLECT_STAGES = ("direct", "indirect", "consolidate", "verify", "entities", "cross")


class ReflectSettings(BaseModel):
    """The MeMo reflection stages run on every document (``MEMO_REFLECT__STAGES=direct,indirect,verify``).

    ``direct`` is always run. ``verify`` checks (and rewrites, up to ``verify_attempts``) the pairs of every other
    stage before they are stored. ``cross`` pairs this document with related documents of its collection.
    """

    # env: a comma-separated list. The default is what a 135M generator on 2 CPU cores affords. Measured on the first 3
    # NarrativeQA documents with the packaged model on vLLM (results/reflect/stages): adding indirect and entities
    # stored 15 more pairs (most of them wrong answers the 135M judge let through), covered 1 more question of 89
    # (0.506 with them) and took ~2x the reflect time. With a capable generator run all six:
    # direct,indirect,consolidate,verify,entities,cross
    stages: Annotated[list[str], NoDecode] = ["direct", "verify"]
    direct_variants: int = Field(default=3, ge=1)  # phrasings per stated fact
    # direct facts at the grain of one fact, from a dependency parse (memo.reflect.syntax): a short-answer pair for each
    # clause's subject, objects and modifiers, appositions, action chains between clauses (kinds direct_atomic,
    # direct_sequence), and the parse's question for a sentence the generator wrote none for (direct_parsed)
    parsed_facts: bool = True
    json_retries: int = Field(default=1, ge=0)  # extra attempts when structured output does not parse
    verify_attempts: int = Field(default=5, ge=1)  # rewrites of a failing pair before it is dropped
    # which pairs the LLM judge sees after the rule checks (self-containment rules and grounding in the source apply to
    # every pair): "all", "generated" (all but direct facts, whose answers are source sentences), "none" (rules only)
    verify_judge: Literal["all", "generated", "none"] = "generated"
    consolidate_max_groups: int = Field(default=12, ge=0)  # per document
    consolidate_max_answer_words: int = Field(default=150, ge=20)
    cross_max_related: int = Field(default=3, ge=0)  # related documents per document
    cross_min_similarity: float = Field(default=0.1, ge=0, le=1)
    cross_max_anchors: int = Field(default=6, ge=0)  # anchor pairs of this document
    cross_batch: int = Field(default=20, ge=1, le=50)  # pairs of other documents per request
    near_duplicate_threshold: float = Field(default=0.85, gt=0, le=1)  # shingle Jaccard (MinHash); 1 = exact only
    max_tokens: int = Field(default=384, ge=32)  # per structured request
    concurrency: int = Field(default=8, ge=1)  # units of work generating at once

    @field_validator("stages", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _check(self) -> ReflectSettings:
        unknown = set(self.stages) - set(REFLECT_STAGES)
        if unknown:
            raise ValueError(f"unknown reflect stages {sorted(unknown)}; known: {', '.join(REFLECT_STAGES)}")
        self.stages = [s for s in REFLECT_STAGES if s in self.stages or s == "direct"]  # the method's order
        return self


class Recipe(BaseModel):
    """How the Memory model is fine-tuned (:func:`memo.train.sft.train_sft`): a whole training's recipe, from which a
    merge update's delta recipe (:class:`DeltaRecipe`) is derived. MeMo's LoRA ablation defaults, scaled to a small
    model."""

    model_config = ConfigDict(extra="forbid")

    # "lora": a peft adapter (hot-loadable into vLLM, mergeable as a task vector); "full_finetune": every weight is
    # trained and a version is a whole model directory (served in-process, or by a vLLM server started on it)
    method: Literal["lora", "full_finetune"] = "lora"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4
    epochs: int = 8
    max_steps: int = 0  # 0 = no cap beyond epochs
    # a small document gives a handful of reflections: 8 epochs of them are a few optimizer steps, too few to learn
    # anything; epochs are added until at least this many steps (max_steps still caps)
    min_steps: int = Field(default=32, ge=0)
    # early stopping on the loss of held-out reflections, measured after every epoch: stop after this many epochs
    # without improvement and keep the best weights (0 = train every epoch, keep the last weights)
    patience: int = Field(default=2, ge=0)
    # the loss of fewer held-out reflections than this is too noisy to stop on (a small document gives up one or
    # two): it is still measured and reported, but every epoch is trained
    early_stop_min_heldout: int = Field(default=4, ge=1)
    # train until the memory knows what it was taught: after every pass over the pairs, a pair is *known* when, under
    # teacher forcing, every token of its answer (and the end token) is the model's argmax, so greedy decoding gives
    # the answer back exactly from its question. Training stops once this share of the trained pairs is known (after
    # ``min_steps``) or ``max_epochs`` passes are spent; after ``epochs`` full epochs each pass is a review round: the
    # pairs not known yet, and a rehearsal of known ones. While it is on, the held-out loss is reported but neither
    # stops training nor picks the kept weights (``patience`` applies only with 0). 0 = off: ``epochs`` epochs
    target_known: float = Field(default=0.98, ge=0, le=1)
    # the budget of passes (full epochs and review rounds) while the target is not met (below ``epochs``: ``epochs``)
    max_epochs: int = Field(default=24, ge=0)
    # known pairs rehearsed in a review round, per pair not known yet (drawn at random, seeded), against forgetting
    review_rehearse: float = Field(default=1.0, ge=0)
    checkpoint_every: int = Field(default=20, ge=1)  # steps between crash-recovery checkpoints
    # LoRA on the top N decoder layers only (0 = every layer): the layers below stay frozen, so what they compute for
    # an example is computed once and cached, and every epoch after the first runs the top N layers and the head only
    top_layers: int = Field(default=0, ge=0)
    seed: int = 0
    device: str = "cpu"  # "cuda" where present
    # the forward and backward pass in bfloat16 (autocast; weights and optimizer stay float32): "auto" = where the
    # hardware computes it natively (a CUDA GPU with bfloat16, a CPU with AVX512-BF16 or AMX), else float32
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class DeltaRecipe(BaseModel):
    """How a merge update's delta is trained (``MEMO_TRAIN__DELTA__*``): on the new documents' reflections and a
    rehearsal of earlier ones, on top of the served memory. The recipe's other fields (rank, seed, min_steps,
    precision, ...) are the whole training's."""

    model_config = ConfigDict(extra="forbid")

    # a delta learns only the new documents, on top of what is served: fewer passes than a retrain on everything
    # (0 = the whole training's epochs; min_steps still applies)
    epochs: int = Field(default=4, ge=0)
    # batch size and learning rate (0 = the whole training's): a top-layer step is small, so a larger batch at a
    # higher rate adds little to its time
    batch_size: int = Field(default=8, ge=0)
    lr: float = Field(default=2e-3, ge=0)
    # the top N decoder layers only (0 = every layer): after one pass through the frozen layers below, an epoch
    # costs the top layers and the head
    top_layers: int = Field(default=8, ge=0)
    # LoRA dropout: a delta learns as much without it, and on a CPU its random masks are a cost of their own
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # earlier documents' reflections rehearsed against forgetting, as a share of the delta's new pairs (0 = none)
    replay: float = Field(default=1.0, ge=0, le=4)
    # the share of that rehearsal drawn from the earlier reflections the served memory knows least (the highest
    # training loss its versions recorded for them), the rest at random (0 = all at random)
    replay_hard: float = Field(default=1.0, ge=0, le=1)


class MergeSettings(BaseModel):
    """How a version's task vectors (its ledger) are merged into the adapter it serves (``MEMO_TRAIN__MERGE__*``)."""

    model_config = ConfigDict(extra="forbid")

    # "cat" and "svd" sum the task vectors exactly ("svd" re-factorised past ``rank``); the others trim first (TIES,
    # DARE) by peft's add_weighted_adapter, at ``density``
    combination: Literal["cat", "svd", "ties_svd", "dare_ties_svd", "dare_linear_svd"] = "svd"
    density: float = Field(default=0.3, gt=0, le=1)
    # rank of the merged adapter: the sum of its deltas' ranks (their exact sum) up to this cap, beyond it the best
    # approximation of that rank (a vLLM server must be started with --max-lora-rank at least this; 0 = the training
    # rank)
    rank: int = Field(default=64, ge=0)


class TrainSettings(Recipe):
    """The Memory model's training (``MEMO_TRAIN__*``): the whole training's recipe, and how later uploads update a
    collection's memory (memo.train.update)."""

    # later uploads: "retrain" = a new adapter on every reflection of the collection; "merge" = a delta adapter on
    # the new documents' reflections (``delta``), merged with the collection's earlier deltas (task vectors, ``merge``)
    update: Literal["retrain", "merge"] = "retrain"
    delta: DeltaRecipe = DeltaRecipe()
    merge: MergeSettings = MergeSettings()
    # periodic consolidation: once a collection's ledger holds this many deltas, the next update retrains on the
    # union instead of merging another one (0 = never automatically; POST .../consolidate does it on demand)
    consolidate_after: int = Field(default=8, ge=0)


class GateSettings(BaseModel):
    """The evaluation gate a new memory version must pass before it is activated."""

    enabled: bool = True
    # held out of training: one question of a fact that has several (its answer is still trained through the others)
    holdout_fraction: float = Field(default=0.2, ge=0, le=0.5)
    holdout_max: int = Field(default=16, ge=0)
    min_recall: float = Field(default=0.1, ge=0, le=1)  # closed-book recall on the held-out questions
    probe_size: int = Field(default=16, ge=0)  # reflections of earlier documents, asked of the old and new version
    max_forgetting: float = Field(default=0.25, ge=0, le=1)  # allowed drop in recall on those probes


class RateLimitSettings(BaseModel):
    """Per-caller request budgets of the gateway (``MEMO_RATE_LIMIT__*``), in a fixed window of one minute: the
    caller is the API key (sha256 of the bearer token) or, without an ``Authorization`` header, the client address.
    ``POST /v1/query`` spends the query budget; every other ``/v1`` request that is not a read (POST, PUT, PATCH,
    DELETE) the write budget; reads and ``/healthz``, ``/readyz``, ``/metrics`` are not limited. Shared by every
    gateway process through Redis when ``MEMO_BROKER_URL`` is a Redis URL, else counted in each process. 0 = off."""

    query_per_minute: int = Field(default=600, ge=0)
    write_per_minute: int = Field(default=120, ge=0)
    key_prefix: str = Field(default="memo:ratelimit", min_length=1)  # Redis keys: <prefix>:<kind>:<caller>:<minute>


class JobSettings(BaseModel):
    """Liveness of jobs (``MEMO_JOBS__*``): the process that holds a job (running a stage, or queued in its
    in-process runner) writes its ``heartbeat_at`` every ``heartbeat_s``; a queued or running job whose heartbeat is
    older than ``stale_after_s`` was left by a process that died, and is requeued (at most ``max_requeues`` times,
    then failed with the reason) by a check at gateway and worker start-up and every ``check_every_s``."""

    heartbeat_s: float = Field(default=30.0, gt=0)
    stale_after_s: float = Field(default=300.0, gt=0)
    check_every_s: float = Field(default=60.0, gt=0)
    max_requeues: int = Field(default=3, ge=0)
    # Redis broker: a task not acknowledged within this time is delivered again (acks_late). It must outlast the
    # longest stage (a training of hours), else a live task is delivered twice; a dead worker's jobs are requeued
    # sooner by the heartbeat check above, not by this timeout
    visibility_timeout_s: float = Field(default=86400.0, gt=0)
    # a stage that meets a transient error (an LLM server or the database away for a moment: memo.pipeline.transient)
    # runs again after retry_backoff_s x 2^n seconds (n = 0, 1, ...; at most 5 minutes), up to `retries` times, before
    # its job fails; the defaults wait out ~2 minutes, what a vLLM CPU server takes to restart
    retries: int = Field(default=6, ge=0)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    # the CPU niceness of the thread that runs jobs (the gateway's in-process runner, a Celery worker's): on a machine
    # shared with the query path, a training yields the cores to the queries (results/reliability/load.md)
    nice: int = Field(default=10, ge=0, le=19)

    @model_validator(mode="after")
    def _check(self) -> JobSettings:
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError("jobs.stale_after_s must be at least twice jobs.heartbeat_s (a live job would look stale)")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMO_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path(".memo")
    database_url: str | None = None  # unset = SQLite file in the data directory
    broker_url: str | None = None  # unset = pipeline tasks run in-process
    max_upload_bytes: int = 20 * 1024 * 1024  # a file, and the files of one upload request together
    max_unpacked_bytes: int = MAX_UNPACKED  # what a DOCX (or a zip given to `memo ingest`) may expand to
    log_json: bool = False  # log lines as JSON objects (with the request id) instead of text
    # POST /v1/query stops waiting after this long: 504, and its LLM calls still in flight are cancelled
    query_timeout_s: float = Field(default=120.0, gt=0)
    rate_limit: RateLimitSettings = RateLimitSettings()
    jobs: JobSettings = JobSettings()

    memory_train_base: str | None = None
    generator: LLMRole = LLMRole()
    memory: LLMRole = LLMRole()
    executive: LLMRole = LLMRole()
    # PUT /v1/admin/executive: a new openai executive must answer a one-word completion within this many seconds
    executive_probe_timeout_s: float = Field(default=5.0, gt=0)

    chunk: ChunkSettings = ChunkSettings()
    reflect: ReflectSettings = ReflectSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    max_sub_questions: int = Field(default=4, ge=1)
    # documents of one batch (memo ingest, memo eval) parsed and reflected at once: a short document's reflection is a
    # few requests with a long tail, so one at a time leaves a batching generator idle. Like Celery workers ingesting
    # one collection, documents reflected together do not see each other's near-duplicates (exact ones are refused)
    ingest_concurrency: int = Field(default=4, ge=1)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'memo.db').resolve()}"

    @property
    def default_model_dir(self) -> Path:
        return (self.data_dir / "models" / "SmolLM2-135M-Instruct").resolve()

    @property
    def blob_dir(self) -> Path:
        return (self.data_dir / "blobs").resolve()

    @property
    def adapter_dir(self) -> Path:
        return (self.data_dir / "adapters").resolve()

    def model_path(self, role: LLMRole) -> str:
        """The model a local backend loads for ``role``."""
        return role.model or str(self.default_model_dir)

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer chunks are measured with: the generator's local weights, else the memory training base."""
        if self.chunk.tokenizer:
            return self.chunk.tokenizer
        if self.generator.backend == "local":
            return self.model_path(self.generator)
        return self.memory_base_model

    @property
    def memory_base_model(self) -> str:
        """The local HF directory the Memory model is trained from (and served from, when local).

        With an ``openai`` memory backend, ``memory.model`` names the base on the server; training still needs
        the weights here: ``MEMO_MEMORY_TRAIN_BASE`` (default: the prepared default model).
        """
        if self.memory.backend == "local":
            return self.model_path(self.memory)
        return self.memory_train_base or str(self.default_model_dir)


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment; keyword overrides win (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
