"""String-similarity answer scores: ANLS (DocVQA, InfoVQA, ST-VQA) and ChartQA relaxed accuracy.

ANLS (Biten et al. 2019, as the DocVQA / ST-VQA servers and big_vision compute it): per reference,
NL = Levenshtein(pred, ref) / max(len(pred), len(ref)) on lower-cased, stripped text; the score
is 1 - NL when NL < threshold (0.5), else 0; an answer's score is the best over its references.
Relaxed accuracy (ChartQA, big_vision `chartqa.py`): when both strings read as numbers (a
trailing "%" divides by 100) and the reference is not 0, correct iff |p - t| / |t| <= tolerance;
otherwise an exact (case-insensitive, stripped) match.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer: the best over its references."""
    if not answers:
        raise ValueError("anls needs at least one reference answer")
    pred = prediction.strip().lower()
    best = 0.0
    for answer in answers:
        ref = answer.strip().lower()
        longest = max(len(pred), len(ref))
        nl = levenshtein(pred, ref) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: list[str], tolerance: float = 0.05) -> float:
    """ChartQA's relaxed correctness of one answer (1.0 or 0.0): the best over its references."""
    pred = _number(prediction)
    for answer in answers:
        target = _number(answer)
        if pred is not None and target:
            if abs(pred - target) / abs(target) <= tolerance:
                return 1.0
        elif prediction.strip().lower() == answer.strip().lower():
            return 1.0
    return 0.0
