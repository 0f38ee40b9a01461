"""The task registry of `paligemma eval`: per benchmark, how its data is read, the prompt the
released checkpoints expect, the decode settings, and how one prediction and the whole set are
scored (each metric as its reference defines it; see `paligemma.metrics`).

Units in scores.json follow each reference's own output: the VQA script prints accuracy in
percent; COCOeval, big_vision's RefCOCO evaluator, ANLS and POPE give fractions; CIDEr is
pycocoevalcap's number (the papers print it x100: 1.446 -> 144.6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import anls, cider_scores, exact_match, pope_scores, vqa_accuracy


@dataclass(frozen=True)
class EvalTask:
    """One benchmark. `kind`: "text" (the answer is compared with reference strings),
    "detect" / "segment" (COCO instances: boxes / masks, one prompt per image) or "refexp"
    (one referring expression -> one box and mask). `prompt`: a template; {q} is the record's
    question / expression / label list ("a ; b"). `score(prediction, record)` -> per-example
    score (None: only the whole set has one, e.g. CIDEr); `aggregate(rows, records)` -> the
    set's metrics."""

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
    options: dict = field(default_factory=dict)


def _mean(rows: list[dict]) -> float:
    return float(np.mean([r["score"] for r in rows])) if rows else 0.0


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
    return pope_scores([r["answer"] for r in rows], labels)


def _text(name, fmt, prompt, headline, score, aggregate, **kw) -> EvalTask:
    return EvalTask(name, fmt, "text", prompt, headline, score=score, aggregate=aggregate, **kw)


def _pope_score(prediction: str, record) -> float:
    return exact_match(prediction, record.answers, lower=True)


TASKS: dict[str, EvalTask] = {
    t.name: t
    for t in (
        _text(
            "vqav2",
            "vqav2",
            "answer en {q}",
            "accuracy",
            lambda p, r: vqa_accuracy(p, r.answers),
            _vqa_aggregate,
        ),
        _text(
            "textvqa",
            "hf",
            "answer en {q}",
            "accuracy",
            lambda p, r: vqa_accuracy(p, r.answers),
            _vqa_aggregate,
            notes="big_vision scores TextVQA with the VQAv2 evaluator",
        ),
        _text(
            "docvqa",
            "hf",
            "{q}",
            "ANLS",
            lambda p, r: anls(p, r.answers),
            lambda rows, recs: {"ANLS": _mean(rows)},
            notes="the DocVQA transfer's prompt is the raw question (no task prefix)",
        ),
        _text(
            "cococap",
            "coco-captions",
            "caption en",
            "CIDEr",
            None,
            _cider_aggregate,
            num_beams=2,
            max_new_tokens=64,
            notes="2-beam search, as big_vision's COCO captioning transfer",
        ),
        _text(
            "pope",
            "hf",
            "answer en {q}",
            "accuracy",
            _pope_score,
            _pope_aggregate,
            notes="accuracy etc. by the official POPE rules (yes = positive class)",
        ),
        _text(
            "exact",
            "jsonl",
            "{q}",
            "exact_match",
            lambda p, r: exact_match(p, r.answers),
            lambda rows, recs: {"exact_match": _mean(rows)},
            notes="the record's own prompt; the answer must equal a reference (stripped)",
        ),
        EvalTask("coco-det", "coco-instances", "detect", "detect {q}", "mAP", 128),
        EvalTask("coco-seg", "coco-instances", "segment", "segment {q}", "mAP", 128),
        EvalTask("refcoco", "refcoco", "refexp", "detect {q}", "accuracy", 128),
        EvalTask("refcoco-seg", "refcoco", "refexp", "segment {q}", "mIoU", 128),
    )
}
