"""Benchmark scoring on top of memo.scoring's SQuAD normalisation: exact match, token F1 and ROUGE-L, each the best
over a question's reference answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memo.scoring import normalise, recalled, token_f1

__all__ = ["best_over", "exact_match", "normalise", "recalled", "rouge_l", "score_answer", "token_f1"]


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
