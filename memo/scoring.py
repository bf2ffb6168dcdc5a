"""Answer scoring shared by the gate and the benchmarks: SQuAD normalisation (lower case, no punctuation, no
articles), token F1, and whether a prediction recalls a reference."""

from __future__ import annotations

import re
import string
from collections import Counter

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


def _numbers(normalised: str) -> set[str]:
    return {t for t in normalised.split() if any(c.isdigit() for c in t)}


def recalled(prediction: str, reference: str, f1_threshold: float = 0.5) -> bool:
    """The reference's words stand in the prediction in order (whole words: "8 days" is not in "18 days"), or they
    share enough tokens and every number of the reference ("7 days" shares half of "14 days" but states another
    number)."""
    ref, pred = normalise(reference), normalise(prediction)
    if not ref:
        return False
    if f" {ref} " in f" {pred} ":
        return True
    return token_f1(prediction, reference) >= f1_threshold and _numbers(ref) <= _numbers(pred)
