"""The QA pair every reflection stage makes and passes on."""

from __future__ import annotations

from dataclasses import dataclass

Source = tuple[str, str]  # (document_id, chunk_id)


@dataclass(frozen=True)
class QAPair:
    """A question, its answer and its kind (``direct``, ``direct_atomic``, ``indirect_temporal``...), and the chunks
    it came from: ``sources[0]`` is its primary source. A pair made from one chunk's text gets its source from the
    caller that knows the chunk (empty until then)."""

    question: str
    answer: str
    kind: str
    sources: tuple[Source, ...] = ()
