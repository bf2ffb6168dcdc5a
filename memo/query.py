"""The read side: answer a question about a collection with its active Memory model and the current Executive, with
the sources of the answer (the reflections of the collection's live documents that support it, memo.sources)."""

from __future__ import annotations

import asyncio

from memo.catalog import get_collection
from memo.db import Database, MemoryVersion
from memo.errors import InvalidInput, NotReady
from memo.executive import config as executive_config
from memo.executive.protocol import Answer, answer
from memo.ingest.chunk import token_counter
from memo.llm import LLM, Engines
from memo.llm.metered import MeteredLLM, ObservedLLM, Usage
from memo.metrics import QUERY_STAGE_SECONDS
from memo.serving.publish import active_version
from memo.settings import LLMRole, Settings
from memo.sources import SourceIndex, load_index

MAX_QUESTION_CHARS = 2000


async def ask(
    db: Database, engines: Engines, collection_id: str, question: str, usage: Usage | None = None
) -> tuple[Answer, str]:
    """The answer and the id of the memory version that gave it. ``usage``: every Memory and Executive call made for
    the answer adds its tokens to it (the prompt's message contents, the completion), counted with the service's
    tokenizer (``settings.tokenizer_path``)."""
    question = question.strip()
    if not question:
        raise InvalidInput("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    # off the event loop: a collection whose reflections changed has its source index built again
    with QUERY_STAGE_SECONDS.labels("read").time():
        version, exec_role, sources = await asyncio.to_thread(_read, db, engines.settings, collection_id)
    with QUERY_STAGE_SECONDS.labels("answer").time():  # the LLM calls within: memo_llm_call_seconds, per role
        executive: LLM = ObservedLLM(engines.for_role(exec_role), "executive")
        memory: LLM = ObservedLLM(engines.memory(version.id, version.adapter_path), "memory")
        if usage is not None:
            count = await asyncio.to_thread(token_counter, engines.settings.tokenizer_path)  # loaded once
            executive, memory = MeteredLLM(executive, count, usage), MeteredLLM(memory, count, usage)
        result = await answer(
            question,
            executive=executive,
            memory=memory,
            sources=sources,
            max_sub=engines.settings.max_sub_questions,
            scorer=engines.scorer(version.id, version.adapter_path),
        )
    return result, version.id


def _read(db: Database, settings: Settings, collection_id: str) -> tuple[MemoryVersion, LLMRole, SourceIndex]:
    with db.session() as s:
        get_collection(s, collection_id)
        version = active_version(s, collection_id)
        if version is None:
            raise NotReady(
                f"collection {collection_id} has no trained memory yet: upload documents and wait for their jobs"
            )
        exec_role = executive_config.current(s, settings)
        # read at the time of the question: a document deleted or replaced a moment ago has no reflections left, so
        # the old version's recall of it finds no support (abstained on, never served stale)
        return version, exec_role, load_index(s, collection_id)
