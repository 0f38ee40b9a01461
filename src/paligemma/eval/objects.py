"""Scoring detection, instance segmentation and referring expressions in `paligemma eval`.

COCO tasks (coco-det / coco-seg): one prompt per image, "detect a ; b" over the image's own
label list when its COCO `images` entry has one ("labels": [...], e.g. the embedded model's
scenes), else every category of the dataset; the objects become COCO results (scores from the
token probabilities, the dataset's category and image ids) for pycocotools' mAP, and are also
matched one-to-one to the true objects (same label, best IoU first) for recall at IoU 0.5,
false positives per image and the matched mask IoU. RefCOCO tasks: the first valid object of
the answer against the one true object, by big_vision's evaluator (`metrics.refexp_scores`).

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metrics import box_iou, coco_detection_scores, evaluator_mask, mask_iou, refexp_scores
from ..tasks.objects import mask_to_rle, rle_to_mask
from .matching import match


def image_labels(dataset) -> dict:
    """image id -> the labels its COCO `images` entry lists ("labels"), where it has them
    (worked out once per dataset)."""
    if getattr(dataset, "_image_labels", None) is None:
        images = dataset.coco["images"] if dataset.coco is not None else []
        dataset._image_labels = {im["id"]: list(im["labels"]) for im in images if im.get("labels")}
    return dataset._image_labels


def prompt_labels(record, dataset, own: dict) -> list[str]:
    """The labels to ask for in `record`'s image: its own list (`own`: `image_labels`), else
    every category of the dataset."""
    labels = own.get(record.meta.get("image_id", record.id))
    return labels or [dataset.categories[k] for k in sorted(dataset.categories)]


def _truth(record) -> list:
    return [t for t in record.objects if not t.iscrowd]


def coco_row(kind: str, record, objects, categories: dict[str, int]) -> dict:
    """What predictions.jsonl keeps of one image: the objects, their COCO results and the
    one-to-one match against the true objects (the image's score: recall at IoU 0.5)."""
    truth = _truth(record)
    image_id = record.meta.get("image_id", record.id)
    row: dict[str, Any] = {"image_id": image_id, "objects": [_plain(o) for o in objects]}
    row["coco"] = objects.to_coco(image_id, categories)
    if kind == "detect":
        preds = [(o.label, o.box) for o in objects if o.valid]
        pairs = match([(t.label, t.box) for t in truth], preds, lambda a, b: box_iou(a[1], b[1]))
        found = sum(v >= 0.5 for _, _, v in pairs)
        row["match"] = {"found": found, "truths": len(truth), "false_pos": len(preds) - found}
        row["score"] = found / len(truth) if truth else float(not preds)
    else:
        preds = [(o.label, o.mask) for o in objects if o.valid and o.mask is not None]
        pairs = match([(t.label, t.mask) for t in truth], preds, lambda a, b: mask_iou(a[1], b[1]))
        ious = [v for _, _, v in pairs] + [0.0] * (len(truth) - len(pairs))
        row["match"] = {"ious": ious, "truths": len(truth), "false_pos": len(preds) - len(pairs)}
        row["score"] = float(np.mean(ious)) if ious else float(not preds)
    return row


def _plain(obj) -> dict:
    """An object as JSON, without its full-size mask (the COCO result keeps it as RLE)."""
    out = obj.to_dict()
    out.pop("mask_rle", None)
    return out


def coco_aggregate(kind: str, rows: list[dict], dataset) -> dict:
    """mAP etc. (pycocotools, fractions) over the images scored, plus the one-to-one match."""
    ids = {row["image_id"] for row in rows}
    truth = dict(dataset.coco)
    truth["images"] = [im for im in truth["images"] if im["id"] in ids]
    truth["annotations"] = [a for a in truth.get("annotations", []) if a["image_id"] in ids]
    results = [dict(r) for row in rows for r in row["coco"]]
    if kind == "segment":
        results = [
            {k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r
        ]
    scores = coco_detection_scores(truth, results, "bbox" if kind == "detect" else "segm")
    matched = [row["match"] for row in rows]
    truths = sum(m["truths"] for m in matched)
    scores["false_pos_per_image"] = sum(m["false_pos"] for m in matched) / max(len(rows), 1)
    if kind == "detect":
        scores["recall50"] = sum(m["found"] for m in matched) / max(truths, 1)
    else:
        ious = [v for m in matched for v in m["ious"]]
        scores["matched_mIoU"] = float(np.mean(ious)) if ious else 0.0
    return scores


def refexp_row(pipe, kind: str, record, objects, width: int, height: int) -> dict:
    """One referring expression: the first valid object's box (normalised, as big_vision
    compares them) and, for segmentation, its mask as the evaluator pastes it (RLE)."""
    first = next((o for o in objects if o.valid), None)
    row: dict[str, Any] = {"objects": [_plain(o) for o in objects]}
    row["box"] = list(first.box_normalized) if first is not None else None
    if kind == "segment":
        mask = None
        if first is not None and first.seg_codes is not None and pipe.mask_vae is not None:
            with torch.inference_mode():
                m64 = pipe.mask_vae.decode(torch.tensor([first.seg_codes]))[0].float().cpu()
            mask = evaluator_mask(m64.numpy(), first.locs, height, width)
        row["mask_rle"] = mask_to_rle(mask, compressed=True) if mask is not None else None
    scores = _refexp(kind, [row], [record])
    row["score"] = scores["mIoU"] if kind == "segment" else scores["accuracy"]
    return row


def _refexp(kind: str, rows: list[dict], records: list) -> dict:
    true_boxes, true_masks = [], []
    for record in records:
        target = record.objects[0]
        w, h = record.width, record.height
        x0, y0, x1, y1 = target.box
        true_boxes.append((x0 / w, y0 / h, x1 / w, y1 / h))
        true_masks.append(target.mask if kind == "segment" else None)
    pred_boxes = [tuple(r["box"]) if r["box"] is not None else None for r in rows]
    if kind != "segment":
        return refexp_scores(pred_boxes, true_boxes)
    pred_masks = [rle_to_mask(r["mask_rle"]) if r.get("mask_rle") else None for r in rows]
    return refexp_scores(pred_boxes, true_boxes, pred_masks, true_masks)


def refexp_aggregate(kind: str, rows: list[dict], records: list) -> dict:
    """Box accuracy at IoU 0.5 and (segmentation) mIoU / cIoU, as fractions."""
    scores = _refexp(kind, rows, records)
    scores.pop("per_example")
    return scores
