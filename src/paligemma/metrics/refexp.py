"""Referring-expression scores: box accuracy at IoU >= 0.5, mask mIoU and cIoU.

big_vision's RefCOCO evaluator (`evaluators/proj/paligemma/transfers/segmentation.py`):
an answer that does not parse (None here) scores IoU 0; a predicted mask is the 64x64 decoder
output resized into its pixel box (PIL "F" image, BILINEAR, threshold > 0; `evaluator_mask`),
zero outside; per-example IoU = |P & G| / (|G| + |P| - |P & G|) on the full-resolution masks, and
mIoU is their mean. cIoU (what many other papers report) is sum |P & G| / sum |P | G| over the set.
Boxes are (x0, y0, x1, y1) in any one consistent unit (pixels, or [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

Box = Sequence[float]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area) if area > 0 else 0.0


def evaluator_mask(
    logits: np.ndarray, locs: Sequence[int], height: int, width: int
) -> np.ndarray | None:
    """The evaluator's full-size bool[H, W] mask from float[64, 64] decoder logits and the four
    location bins (y0, x0, y1, x1); None when the box is unordered or empty at this size."""
    y0, x0, y1, x1 = (k / 1023 for k in locs)
    y0, x0, y1, x1 = int(y0 * height), int(x0 * width), int(y1 * height), int(x1 * width)
    if not (locs[2] > locs[0] and locs[3] > locs[1]) or y1 <= y0 or x1 <= x0:
        return None
    image = Image.fromarray(np.asarray(logits, dtype=np.float32))  # mode "F"
    resized = np.asarray(image.resize([x1 - x0, y1 - y0], Image.BILINEAR)) > 0.0
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = resized[: height - y0, : width - x0]
    return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool[H, W] masks; 0 when both are empty."""
    inter, union = _mask_counts(a, b)
    return inter / union if union else 0.0


def _mask_counts(pred: np.ndarray | None, true: np.ndarray) -> tuple[int, int]:
    true = np.asarray(true, dtype=bool)
    if pred is None:
        return 0, int(true.sum())
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"predicted mask {pred.shape} and true mask {true.shape} differ in shape")
    inter = int((pred & true).sum())
    return inter, int(true.sum()) + int(pred.sum()) - inter


def refexp_scores(
    pred_boxes: Sequence[Box | None],
    true_boxes: Sequence[Box],
    pred_masks: Sequence[np.ndarray | None] | None = None,
    true_masks: Sequence[np.ndarray] | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """{"accuracy": fraction with box IoU >= iou_threshold, "mIoU", "cIoU" (with masks; else
    absent), "per_example": [{"box_iou", "hit", "mask_iou"}]}; a None prediction scores 0."""
    if len(pred_boxes) != len(true_boxes):
        raise ValueError(f"{len(pred_boxes)} predicted boxes for {len(true_boxes)} true ones")
    per = []
    for pred, true in zip(pred_boxes, true_boxes, strict=True):
        iou = 0.0 if pred is None else box_iou(pred, true)
        per.append({"box_iou": iou, "hit": iou >= iou_threshold})
    out = {"accuracy": sum(e["hit"] for e in per) / len(per) if per else 0.0}
    if true_masks is not None:
        pred_masks = pred_masks if pred_masks is not None else [None] * len(true_masks)
        if not len(pred_masks) == len(true_masks) == len(per):
            raise ValueError("pred_masks, true_masks and boxes must have one entry per example")
        inters, unions = 0, 0
        for entry, pred, true in zip(per, pred_masks, true_masks, strict=True):
            inter, union = _mask_counts(pred, true)
            entry["mask_iou"] = inter / union if union else 0.0
            inters, unions = inters + inter, unions + union
        out["mIoU"] = sum(e["mask_iou"] for e in per) / len(per) if per else 0.0
        out["cIoU"] = inters / unions if unions else 0.0
    out["per_example"] = per
    return out
