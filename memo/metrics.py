"""Prometheus metrics of the library's hot paths, in the process's default registry (the gateway's ``/metrics``
exposes it): the query path's stages and the LLM calls it makes, per role."""

from __future__ import annotations

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
