"""The Memory model's chat format: how a question is put to it and how it says it does not know.

Training writes every reflection in this format, and the gate, the query protocol and the benchmarks ask in it, so a
change here changes what a trained memory expects: memories trained before it must be retrained.
"""

from __future__ import annotations

MEMORY_SYSTEM = 'Answer from what you have learned, briefly. If you do not know, answer "I don\'t know".'
IDK = "I don't know"


def memory_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": MEMORY_SYSTEM}, {"role": "user", "content": question}]


def is_idk(text: str) -> bool:
    """The Memory's answer says it does not know (or is empty)."""
    t = text.lower()
    return not t.strip() or IDK.lower() in t or "i do not know" in t
