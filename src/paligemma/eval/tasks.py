"""The task registry of `paligemma eval`: per benchmark, how its data is read, the prompt the
released checkpoints expect, the decode settings, and how one prediction and the whole set are
scored (each metric as its reference defines it; see `paligemma.metrics`).

Units in scores.json follow each reference's own output: the VQA script prints accuracy in
percent; COCOeval, big_vision's RefCOCO evaluator, ANLS and POPE give fractions; CIDEr is
pycocoevalcap's number (the papers print it x100: 1.446 -> 144.6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import (
    anls,
    cider_scores,
    exact_match,
    pope_scores,
    relaxed_accuracy,
    vqa_accuracy,
)


@dataclass(frozen=True)
class EvalTask:
    """One benchmark. `kind`: "text" (the answer is compared with reference strings),
    "detect" / "segment" (COCO instances: boxes / masks, one prompt per image) or "refexp"
    (one referring expression -> one box and mask). `prompt`: a template; {q} is the record's
    question / expression / label list ("a ; b"). `score(prediction, record)` -> per-example
    score (None: only the whole set has one, e.g. CIDEr); `aggregate(rows, records)` -> the
    set's metrics. `masks`: the objects are masks (segmentation), else boxes."""

    name: str
    fmt: str  # the reader (paligemma.data FORMATS)
    kind: str
    prompt: str
    headline: str  # the key the summary leads with
    max_new_tokens: int = 32
    num_beams: int = 1
    score: Callable[[str, Any], float | None] | None = None
    aggregate: Callable[[list[dict], list], dict] | None = None
    notes: str = ""
    masks: bool = False  # the answer's objects are masks ("segment"), else boxes ("detect")

    @property
    def objects(self) -> str:
        """How the answer's objects are read: "segment" or "detect"."""
        return "segment" if self.masks else "detect"


def _mean(rows: list[dict]) -> float:
    """The mean score of the rows that have one (questions without answers have none)."""
    scores = [r["score"] for r in rows if r["score"] is not None]
    return float(np.mean(scores)) if scores else 0.0


def _vqa_aggregate(rows: list[dict], records: list) -> dict:
    """The VQA script's overall accuracy and per answer type, in percent (2 decimals)."""
    out = {"accuracy": round(100 * _mean(rows), 2)}
    by_type: dict[str, list[dict]] = {}
    for row, record in zip(rows, records, strict=True):
        kind = record.meta.get("answer_type")
        if kind:
            by_type.setdefault(kind, []).append(row)
    if by_type:
        out["per_answer_type"] = {k: round(100 * _mean(v), 2) for k, v in sorted(by_type.items())}
    return out


def _cider_aggregate(rows: list[dict], records: list) -> dict:
    """Corpus CIDEr-D (the idf comes from this set's references); per-example scores too."""
    predictions = {str(r["id"]): r["answer"] for r in rows}
    references = {str(rec.id): list(rec.answers) for rec in records}
    corpus, per, tokenizer = cider_scores(predictions, references)
    for r in rows:
        r["score"] = float(per[str(r["id"])])
    return {"CIDEr": corpus, "CIDEr_x100": round(100 * corpus, 2), "tokenizer": tokenizer}


def _pope_aggregate(rows: list[dict], records: list) -> dict:
    labels = [rec.answers[0] if rec.answers else "" for rec in records]
    scores = pope_scores([r["answer"] for r in rows], labels)
    return scores | {"accuracy_exact_match": _mean(rows)}  # big_vision's rule


def _text(name, fmt, prompt, headline, score, aggregate, max_new=32, beams=1) -> EvalTask:
    notes = NOTES.get(name, "")
    return EvalTask(name, fmt, "text", prompt, headline, max_new, beams, score, aggregate, notes)


def _pope_score(prediction: str, record) -> float:
    return exact_match(prediction, record.answers, lower=True)


def _vqa_score(prediction: str, record) -> float:
    return vqa_accuracy(prediction, record.answers)


def _anls_score(prediction: str, record) -> float:
    return anls(prediction, record.answers)


def _relaxed_score(prediction: str, record) -> float:
    return relaxed_accuracy(prediction, record.answers)


def _exact_score(prediction: str, record) -> float:
    return exact_match(prediction, record.answers)


def _mean_as(key: str) -> Callable[[list[dict], list], dict]:
    return lambda rows, records: {key: _mean(rows)}


NOTES = {
    "textvqa": "big_vision scores TextVQA with the VQAv2 evaluator",
    "docvqa": "the DocVQA transfer's prompt is the raw question (no task prefix)",
    "cococap": "2-beam search, as big_vision's COCO captioning transfer",
    "pope": "accuracy etc. by the official POPE rules (yes = positive class); "
    "accuracy_exact_match is big_vision's (answer == label)",
    "chartqa": "relaxed accuracy (5% numeric tolerance); the prompt is the raw question",
    "exact": "the record's own prompt; the answer must equal a reference (stripped)",
}
_ANSWER = "answer en {q}"

TASKS: dict[str, EvalTask] = {
    t.name: t
    for t in (
        _text("vqav2", "vqav2", _ANSWER, "accuracy", _vqa_score, _vqa_aggregate),
        _text("textvqa", "hf", _ANSWER, "accuracy", _vqa_score, _vqa_aggregate),
        _text("docvqa", "hf", "{q}", "ANLS", _anls_score, _mean_as("ANLS")),
        _text("cococap", "coco-captions", "caption en", "CIDEr", None, _cider_aggregate, 64, 2),
        _text("pope", "hf", _ANSWER, "accuracy", _pope_score, _pope_aggregate),
        _text("chartqa", "hf", "{q}", "accuracy", _relaxed_score, _mean_as("accuracy")),
        _text("exact", "jsonl", "{q}", "exact_match", _exact_score, _mean_as("exact_match")),
        EvalTask("coco-det", "coco-instances", "detect", "detect {q}", "mAP", 128),
        EvalTask("coco-seg", "coco-instances", "segment", "segment {q}", "mAP", 128, masks=True),
        EvalTask("refcoco", "refcoco", "refexp", "detect {q}", "accuracy", 128),
        EvalTask("refcoco-seg", "refcoco", "refexp", "segment {q}", "mIoU", 128, masks=True),
    )
}
