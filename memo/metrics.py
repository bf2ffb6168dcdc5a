"""Prometheus metrics of the library's hot paths, in the process's default registry (the gateway's ``/metrics``
exposes it): the query path's stages and the LLM calls it makes, per role: calls, errors, latency and tokens."""

from __future__ import annotations

from contextvars import ContextVar

from prometheus_client import Counter, Histogram

# a query: "read" = the active version, the Executive in force and the source index (database, off the event loop);
# "answer" = the protocol (Memory recall, and the Executive's plan and synthesis when the recall is not supported)
QUERY_STAGE_SECONDS = Histogram(
    "memo_query_stage_seconds",
    "Wall time of a stage of answering a question.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LLM_CALLS = Counter("memo_llm_calls_total", "LLM chat calls, by role and outcome (ok, error).", ["role", "outcome"])
LLM_CALL_SECONDS = Histogram(
    "memo_llm_call_seconds",
    "Wall time of an LLM chat call, by role (errors included).",
    ["role"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LLM_TOKENS = Counter(
    "memo_llm_tokens_total",
    "Tokens of LLM chat calls as an OpenAI-compatible server reports them, by role and kind (prompt, completion).",
    ["role", "kind"],
)
# the role of the LLM call in progress (set by memo.llm.metered.ObservedLLM around it): backends label tokens with it
LLM_ROLE: ContextVar[str] = ContextVar("memo_llm_role", default="other")


def count_tokens(usage: object) -> None:
    """Adds an OpenAI ``usage`` object's prompt and completion tokens to :data:`LLM_TOKENS` (ignored if malformed)."""
    if not isinstance(usage, dict):
        return
    role = LLM_ROLE.get()
    for kind in ("prompt", "completion"):
        n = usage.get(f"{kind}_tokens")
        if isinstance(n, int) and n >= 0:
            LLM_TOKENS.labels(role, kind).inc(n)
