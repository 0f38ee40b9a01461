"""One-to-one matching of predicted and true objects (the embedded model's detection recall and
matched mask IoU): pairs with equal labels, greedily by IoU, best first.

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def match(
    truth: list[tuple[str, Any]], preds: list[tuple[str, Any]], iou: Callable[[Any, Any], float]
) -> list[tuple[int, int, float]]:
    """One-to-one pairs (truth i, pred j, iou) of (label, box-or-mask) items with equal labels,
    greedily by IoU (> 0), best first."""
    pairs = sorted(
        (
            (iou(t, p), i, j)
            for i, t in enumerate(truth)
            for j, p in enumerate(preds)
            if t[0] == p[0]
        ),
        reverse=True,
    )
    used_t, used_p, out = set(), set(), []
    for v, i, j in pairs:
        if v > 0 and i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
            out.append((i, j, v))
    return out
