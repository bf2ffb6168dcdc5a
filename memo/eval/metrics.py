"""Answer scoring with the usual SQuAD normalisation (lower case, no punctuation, no articles): exact match, token
F1 and ROUGE-L, each the best over a question's reference answers."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def recalled(prediction: str, reference: str, f1_threshold: float = 0.5) -> bool:
    """The reference is contained in the prediction, or they share enough tokens."""
    ref = normalise(reference)
    return bool(ref) and (ref in normalise(prediction) or token_f1(prediction, reference) >= f1_threshold)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference."""
    return float(normalise(prediction) == normalise(reference))


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) on normalised tokens: the longest common subsequence over precision and recall."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over(metric: Callable[[str, str], float], prediction: str, references: Sequence[str]) -> float:
    """The best score of ``prediction`` against any of the references (0 when there are none)."""
    return max((metric(prediction, r) for r in references), default=0.0)


def score_answer(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """Exact match, token F1 and ROUGE-L of one answer, each the best over the reference answers."""
    return {
        "em": best_over(exact_match, prediction, references),
        "f1": best_over(token_f1, prediction, references),
        "rouge_l": best_over(rouge_l, prediction, references),
    }
