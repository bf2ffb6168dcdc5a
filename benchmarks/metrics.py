"""Benchmark scoring on top of memo.scoring's SQuAD normalisation: exact match, token F1 and ROUGE-L, each the best
over a question's reference answers; accuracy (the answer states a reference: :func:`memo.scoring.recalled`, the
normalised reference inside the normalised answer or token F1 >= 0.5 with every number of the reference); and, for
methods without a structured abstention signal, a textual detector of answers that say they do not know
(:func:`abstains`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from memo.scoring import normalise, recalled, token_f1

__all__ = [
    "UNANSWERABLE",
    "abstains",
    "best_over",
    "correct",
    "exact_match",
    "normalise",
    "recalled",
    "rouge_l",
    "score_answer",
    "states_any",
    "token_f1",
]

UNANSWERABLE = "unanswerable"  # the kind whose right answer is an abstention

# what an answer that declines says ("I don't know", "The document does not state...", "Unknown.", "not mentioned in
# the passages", "cannot be determined"): the benchmark's reading of baselines that have no abstention flag. The
# service's own answers are judged by its structured signal (memo.executive.protocol.Answer.abstained), not by this
_ABSTAIN = re.compile(
    r"\b(?:"
    r"(?:do|does|did)\s*(?:n[o']?t|not)\s+(?:know|say|state|mention|specify|provide|give|contain|answer|include)"
    r"|don'?t\s+know|dunno|unknown|not\s+known"
    r"|(?:is|are|was|were|been)?\s*not\s+(?:stated|mentioned|specified|given|provided|listed|included|available|"
    r"found|clear|indicated|disclosed|described|covered|addressed)"
    r"|no\s+(?:information|mention|details?|data|answer|indication|record)"
    r"|(?:cannot|can'?t|can\s+not|unable\s+to)\s+(?:be\s+)?(?:determine|determined|answer|answered|tell|find|found|"
    r"say|know|provide|identify|infer)"
    r"|not\s+(?:sure|certain)"
    r"|(?:there\s+is|there'?s)\s+no\s+(?:way|answer)"
    r")\b",
    re.IGNORECASE,
)


def abstains(text: str) -> bool:
    """The answer declines to answer (an empty answer too): a textual detector for methods with no abstention flag."""
    t = " ".join(text.replace("\u2019", "'").split())
    return not t or _ABSTAIN.search(t) is not None


def states_any(prediction: str, references: Sequence[str]) -> bool:
    """The prediction states one of the references (:func:`memo.scoring.recalled`)."""
    return any(recalled(prediction, r) for r in references)


def correct(prediction: str, references: Sequence[str], kind: str, abstained: bool) -> bool:
    """Accuracy of one answer: on an ``unanswerable`` question, that it abstained; else that it states a reference."""
    return abstained if kind == UNANSWERABLE else states_any(prediction, references)


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
