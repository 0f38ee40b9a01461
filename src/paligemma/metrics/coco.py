"""COCO detection and instance-segmentation mAP through pycocotools' own COCOeval.

Nothing is re-computed here: the ground truth goes into `COCO`, the results through
`COCO.loadRes`, and `COCOeval(..., iouType).evaluate/accumulate/summarize` gives the numbers.
`stats` become mAP (IoU .50:.95), mAP50, mAP75, mAP_small/medium/large and AR_1/10/100(/size);
per-class AP is the mean of `eval["precision"][:, :, k, area=all, maxDets=100]` over its defined
entries (what COCOeval averages for mAP). COCOeval's -1 ("no ground truth") becomes None.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

_INSTALL = "COCO mAP needs pycocotools: pip install 'paligemma[eval]'"
STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
STAT_NAMES += ("AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return COCO, COCOeval, mask_utils


def _ground_truth(coco_cls, data: dict) -> Any:
    data = copy.deepcopy(data)
    for ann in data.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    data.setdefault("categories", [])
    data.setdefault("info", {})  # pycocotools 2.0.10's loadRes reads gt.dataset["info"]
    coco = coco_cls()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _compressed(results: list[dict], gt, mask_utils) -> list[dict]:
    """Results with every mask as compressed RLE (loadRes needs it to compute areas)."""
    out = []
    for i, res in enumerate(results):
        if "score" not in res:
            raise ValueError(f"result {i} has no 'score' (COCOeval ranks detections by it)")
        res = dict(res)
        seg = res.get("segmentation")
        if seg is not None and not (isinstance(seg, dict) and isinstance(seg["counts"], str)):
            image = gt.imgs[res["image_id"]]
            rle = mask_utils.frPyObjects(seg, image["height"], image["width"])
            rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
            res["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        out.append(res)
    return out


def _per_class(evaluator, gt) -> dict[str, float | None]:
    precision = evaluator.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        name = gt.cats[cat_id].get("name", str(cat_id))
        out[name] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    return out


def coco_detection_scores(ground_truth: dict, results: list[dict], iou_type: str = "bbox") -> dict:
    """COCO mAP of `results` (COCO results: image_id, category_id, bbox [x, y, w, h] and/or
    segmentation, score) against a COCO instances dict; iou_type "bbox" or "segm". Fractions."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    coco_cls, eval_cls, mask_utils = _pycocotools()
    gt = _ground_truth(coco_cls, ground_truth)
    if not results:
        present = [c for c in gt.dataset.get("categories", []) if gt.getAnnIds(catIds=[c["id"]])]
        return {name: 0.0 for name in STAT_NAMES} | {"per_class": {c["name"]: 0.0 for c in present}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(_compressed(results, gt, mask_utils))
        evaluator = eval_cls(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    values = zip(STAT_NAMES, evaluator.stats, strict=True)
    stats = {name: (float(v) if v > -1 else None) for name, v in values}
    return stats | {"per_class": _per_class(evaluator, gt)}
