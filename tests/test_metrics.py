"""Metrics against their references, on cases the implementation did not choose itself.

VQA accuracy and ANLS: the official descriptions' examples (visualqa.org "Evaluation": the
normalisation rules and min(#humans/3, 1) over the 10-choose-9 subsets; ANLS as in Biten et al.,
threshold 0.5); POPE: the official evaluate.py's keyword reading; CIDEr: pycocoevalcap's `Cider`
on its own Java-tokenised captions; mAP: pycocotools' `COCOeval` run directly; mIoU / cIoU and box
IoU: independent numpy computations (rasterised boxes, boolean masks).
"""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from paligemma.metrics import (
    anls,
    box_iou,
    cider,
    cider_scores,
    coco_detection_scores,
    evaluator_mask,
    exact_match,
    normalize_vqa,
    pope_scores,
    ptb_tokenize_python,
    refexp_scores,
    relaxed_accuracy,
    vqa_accuracy,
)
from paligemma.metrics.text import levenshtein
from paligemma.tasks.objects import mask_to_rle
from paligemma.tasks.vqvae import paste_mask

# Captions that exercise PTB tokenisation: punctuation, quotes, hyphens, numbers, apostrophes.
TRICKY = [
    "A man's dog, running (fast) on the beach!",
    'He said "hello" to the 3.5-year-old kid.',
    "Two black-and-white cats can't sleep; they're awake...",
    "It costs $1,000 -- or 20% more?",
    "A {curly} [square] sign: 'STOP' at 10:30 p.m.",
    "don't won't cannot gonna I'm",
    "mr. smith's U.S. trip -- e-mail",
    "a red/blue sign & a #1 fan @ home",
    "  Extra   spaces\tand tabs ",
    "Ends with a period.",
    "the 1990s' music",
    "5'10\" tall",
    "well-known 'quoted' `back` ''x''",
    "A dog. The cat sat.",
    "Mr. Brown's car is no. 5!",
    "it's a 2-story house",
    "what's that? a kite",
    "people: 3; dogs: 2",
    "I'll we've you'd she'd they'll",
    "A sign that says 'no parking'.",
    "1.5 kg of apples - cheap",
    "St. Louis at 5:00pm",
    "the dogs' bowls",
    "A--B x-ray",
    "1/2 cup of $5.99 rice",
    "#hashtag a.m. stuff",
    "Hello... world",
    "a cat!!",
    "an 18-wheeler truck",
    "Two (2) kids; one's crying.",
    "a woman holding an umbrella in the rain .",
    "The man is riding a bike,",
    "a 10-year-old boy's bike",
    'the sign reads "STOP"',
    "a tennis player , swinging a racket",
    "is it 100%?",
    "7 p.m. dinner",
    "OK, it's fine",
]
TRICKY += ["wow!!! really?!", "what?? no", "#1a #go-team"]


# --- VQA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("dont", "don't"),  # "Adding apostrophe if a contraction is missing it"
        ("100,978", "100978"),  # "no space is inserted if it occurs between digits"
        ("2:50 pm", "2:50 pm"),  # colons are kept ("they often refer to time")
        ("girl's", "girl's"),  # apostrophes are kept (possessives)
        ("3.5", "3.5"),  # "Removing periods except if it occurs as decimal"
        ("Yes.", "yes"),  # lower case, period removed
        ("Two", "2"),  # "Converting number words to digits"
        ("a dog", "dog"),  # "Removing articles (a, an, the)"
        ("the Red/Blue", "red blue"),  # punctuation becomes a space
        ("black - white", "black white"),  # ... or vanishes next to a space
    ],
)
def test_vqa_normalisation_follows_the_documented_rules(raw, normalised):
    assert normalize_vqa(raw) == normalised


@pytest.mark.parametrize(
    ("humans", "expected"),
    # min(#humans that said it / 3, 1), averaged over the 10 leave-one-out sets of nine:
    # k humans -> (10 - k) sets hold all k, k sets hold k - 1.
    [
        (0, 0.0),
        (1, 9 * 1 / 3 / 10),
        (2, (8 * 2 / 3 + 2 * 1 / 3) / 10),
        (3, (7 + 3 * 2 / 3) / 10),
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_averages_over_the_ten_choose_nine_subsets(humans, expected):
    others = ["dog", "bird", "cow", "fox", "owl", "ant", "bee", "elk", "yak", "emu"]
    answers = ["cat"] * humans + others[: 10 - humans]
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_only_when_the_references_disagree():
    # Disagreeing references: both sides normalised, "Two dogs!" matches "2 dogs" (3 of 10).
    answers = ["2 dogs"] * 3 + ["3 dogs"] * 7
    assert vqa_accuracy("Two dogs!", answers) == pytest.approx(0.9)
    # Ten identical references: only whitespace is stripped (official master; VQA issue #14).
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0


def test_exact_match_and_pope_follow_their_scripts():
    assert exact_match("left", ["left"]) == 1.0
    assert exact_match("Left", ["left"]) == 0.0
    assert exact_match("Left ", ["left"], lower=True) == 1.0
    # evaluate.py: first sentence, commas removed, "No"/"no"/"not" as a word -> no, else yes.
    predictions = ["Yes, there is a car.", "No.", "There is not a dog", "yes", "No, never. Yes"]
    labels = ["yes", "no", "yes", "no", "no"]  # -> TP 1, FP 1, TN 2, FN 1
    scores = pope_scores(predictions, labels)
    assert scores == pytest.approx(
        {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.4}
    )


# --- ANLS, relaxed accuracy --------------------------------------------------------------------


def test_levenshtein_known_distances():
    assert [
        levenshtein(a, b) for a, b in [("kitten", "sitting"), ("flaw", "lawn"), ("", "abc")]
    ] == [
        3,
        2,
        3,
    ]


def test_anls_follows_its_definition():
    # 1 - NL(pred, gt) with NL = distance / max length, if NL < 0.5, else 0; case-insensitive.
    assert anls("Kelloggs", ["Kellogg's"]) == pytest.approx(1 - 1 / 9)
    assert anls(" KELLOGG'S ", ["kellogg's"]) == 1.0
    assert anls("abd", ["abc"]) == pytest.approx(2 / 3)
    assert anls("ac", ["ab"]) == 0.0  # NL = 0.5 is not below the threshold
    assert anls("ac", ["ab"], threshold=0.6) == 0.5
    assert anls("xyz", ["abc", "xyw"]) == pytest.approx(2 / 3)  # the best reference counts


def test_chartqa_relaxed_accuracy():
    assert relaxed_accuracy("10.4", ["10"]) == 1.0  # 4% off
    assert relaxed_accuracy("10.6", ["10"]) == 0.0  # 6% off
    assert relaxed_accuracy("12%", ["0.12"]) == 1.0  # a trailing % divides by 100
    assert relaxed_accuracy("0.01", ["0"]) == 0.0  # a zero target needs an exact match
    assert relaxed_accuracy("Yes", ["yes"]) == 1.0


# --- CIDEr -------------------------------------------------------------------------------------


def _java_tokens(captions: dict) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):
        return PTBTokenizer().tokenize(
            {k: [{"caption": c} for c in v] for k, v in captions.items()}
        )


def test_python_ptb_tokenizer_equals_the_java_one():
    java = _java_tokens({i: [c] for i, c in enumerate(TRICKY)})
    assert [ptb_tokenize_python(c) for c in TRICKY] == [java[i][0] for i in range(len(TRICKY))]


def test_cider_equals_pycocoevalcap_on_the_same_tokens():
    references = {
        1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave."],
        2: ["Two dogs play with a frisbee in the park.", "Dogs running on the grass!"],
        "x": ["A plate of food with broccoli (and rice).", "a dinner plate, with vegetables"],
        4: ["A red double-decker bus on a city street.", "The bus is parked by the curb."],
    }
    predictions = {1: "a man surfing a wave", 2: "two dogs playing in the grass", "x": "a plate"}
    predictions[4] = "a red bus driving down a street"
    ids = list(references)
    gts = _java_tokens(references)
    res = _java_tokens({k: [predictions[k]] for k in ids})
    expected, per_id = Cider().compute_score(gts, res)
    score, ours, used = cider_scores(predictions, references)
    assert used == "ptb-java"
    assert score == pytest.approx(expected, abs=1e-6)
    assert cider(predictions, references) == pytest.approx(expected, abs=1e-6)
    assert [ours[k] for k in ids] == pytest.approx(list(per_id), abs=1e-6)
    python_score = cider_scores(predictions, references, tokenizer="python")
    assert python_score[0] == pytest.approx(expected, abs=1e-6)
    assert python_score[2] == "ptb-python"


# --- referring expressions ---------------------------------------------------------------------


def _raster(box, size=64) -> np.ndarray:
    grid = np.zeros((size, size), dtype=bool)
    grid[box[1] : box[3], box[0] : box[2]] = True
    return grid


def test_refexp_scores_match_numpy():
    rng = np.random.default_rng(0)
    true_boxes, pred_boxes, true_masks, pred_masks = [], [], [], []
    for i in range(12):
        x0, y0 = rng.integers(0, 30, 2)
        true = (int(x0), int(y0), int(x0 + rng.integers(5, 30)), int(y0 + rng.integers(5, 30)))
        shift = rng.integers(-8, 9, 4)
        pred = tuple(int(v) for v in np.clip(np.array(true) + shift, 0, 64))
        pred = None if i == 3 or pred[2] <= pred[0] or pred[3] <= pred[1] else pred
        true_boxes.append(true)
        pred_boxes.append(pred)
        true_masks.append(rng.random((64, 64)) < 0.3)
        pred_masks.append(None if i == 5 else rng.random((64, 64)) < 0.3)
    scores = refexp_scores(pred_boxes, true_boxes, pred_masks, true_masks)
    # Independent: box IoU by counting pixels of rasterised boxes; masks with numpy logic.
    ious = [
        0.0 if p is None else (_raster(p) & _raster(t)).sum() / (_raster(p) | _raster(t)).sum()
        for p, t in zip(pred_boxes, true_boxes, strict=True)
    ]
    assert [e["box_iou"] for e in scores["per_example"]] == pytest.approx(ious)
    assert scores["accuracy"] == pytest.approx(np.mean(np.array(ious) >= 0.5))
    empty = np.zeros((64, 64), dtype=bool)
    preds = [empty if p is None else p for p in pred_masks]
    inter = np.array([np.logical_and(p, t).sum() for p, t in zip(preds, true_masks, strict=True)])
    union = np.array([np.logical_or(p, t).sum() for p, t in zip(preds, true_masks, strict=True)])
    assert scores["mIoU"] == pytest.approx(np.mean(inter / union))
    assert scores["cIoU"] == pytest.approx(inter.sum() / union.sum())
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_evaluator_mask_pastes_into_the_truncated_box():
    logits = np.ones((64, 64), dtype=np.float32)
    mask = evaluator_mask(logits, (100, 200, 600, 900), height=50, width=80)
    # Pixel box: int(k / 1023 * size) -> y 4..29, x 15..70; everything else stays 0.
    expected = np.zeros((50, 80), dtype=bool)
    expected[4:29, 15:70] = True
    assert np.array_equal(mask, expected)
    assert evaluator_mask(logits, (600, 200, 100, 900), 50, 80) is None  # unordered
    assert evaluator_mask(logits, (100, 200, 101, 900), 50, 80) is None  # empty at 50 px
    # A smooth mask: PIL's bilinear (the evaluator) and the pipeline's torch resize agree.
    yy, xx = np.mgrid[:64, :64]
    blob = (1.0 - ((yy - 30) ** 2 + (xx - 34) ** 2) / 400.0).astype(np.float32)
    ours = evaluator_mask(blob, (100, 200, 600, 900), 300, 400)
    box = (
        int(200 / 1023 * 400),
        int(100 / 1023 * 300),
        int(900 / 1023 * 400),
        int(600 / 1023 * 300),
    )
    theirs, _ = paste_mask(torch.from_numpy(blob), box, 300, 400)
    assert (ours != theirs).mean() < 0.002


# --- COCO mAP ----------------------------------------------------------------------------------


def _coco_ground_truth() -> dict:
    rng = np.random.default_rng(1)
    images = [{"id": i, "width": 120, "height": 100, "file_name": f"{i}.jpg"} for i in (7, 9)]
    anns = []
    for n in range(10):
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        w, h = (int(v) for v in rng.integers(10, 40, 2))
        poly = [x, y, x + w, y, x + w, y + h, x + w // 2, y + h + 5, x, y + h]
        anns.append(
            {"id": n + 1, "image_id": (7, 9)[n % 2], "category_id": (3, 5)[n % 3 == 0]}
            | {"bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": [poly]}
        )
    categories = [{"id": 3, "name": "square"}, {"id": 5, "name": "triangle"}]
    return {"images": images, "annotations": anns, "categories": categories}


def _detections(gt: dict) -> list[dict]:
    rng = np.random.default_rng(2)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = (v + float(rng.normal(0, 3)) for v in ann["bbox"])
        mask = np.zeros((100, 120), dtype=bool)
        mask[int(max(y, 0)) : int(y + h), int(max(x, 0)) : int(x + w)] = True
        category = ann["category_id"] if rng.random() < 0.8 else 8 - ann["category_id"]
        results.append(
            {"image_id": ann["image_id"], "category_id": category, "bbox": [x, y, w, h]}
            | {"score": float(rng.random()), "mask": mask}
        )
    return results


def _cocoeval(gt_dict: dict, results: list[dict], iou_type: str, cat_ids=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_scores_equal_cocoeval(iou_type):
    gt = _coco_ground_truth()
    detections = _detections(gt)
    direct = []  # what a user would hand COCOeval: compressed RLE made by pycocotools
    ours = []  # what our pipeline writes: uncompressed RLE (tasks.objects.mask_to_rle)
    for det in detections:
        base = {k: v for k, v in det.items() if k != "mask"}
        if iou_type == "segm":
            rle = mask_utils.encode(np.asfortranarray(det["mask"].astype(np.uint8)))
            direct.append(base | {"segmentation": rle | {"counts": rle["counts"].decode()}})
            ours.append(base | {"segmentation": mask_to_rle(det["mask"])})
        else:
            direct.append(base)
            ours.append(base)
    scores = coco_detection_scores(gt, ours, iou_type=iou_type)
    stats = _cocoeval(gt, direct, iou_type)
    assert [scores[k] for k in ("mAP", "mAP50", "mAP75")] == pytest.approx(list(stats[:3]))
    assert 0.1 < scores["mAP50"] <= 1.0  # not a vacuous 0 = 0
    for cat in gt["categories"]:  # per class: COCOeval restricted to that one category
        alone = _cocoeval(gt, direct, iou_type, cat_ids=[cat["id"]])
        assert scores["per_class"][cat["name"]] == pytest.approx(alone[0])


def test_coco_scores_need_scores_and_accept_no_detections():
    gt = _coco_ground_truth()
    with pytest.raises(ValueError, match="score"):
        coco_detection_scores(gt, [{"image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]}])
    assert coco_detection_scores(gt, [])["mAP"] == 0.0


def test_without_java_or_packages_the_fallbacks_are_explicit(monkeypatch):
    from paligemma.metrics import caption

    monkeypatch.setattr(caption, "java_available", lambda: False)
    refs = {1: ["a dog is running", "dog running"], 2: ["a red bus", "the bus is red"]}
    score, _, used = cider_scores({1: "a dog runs", 2: "a red bus"}, refs)
    assert used == "ptb-python" and score > 0
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"pip install 'paligemma\[eval\]'"):
        coco_detection_scores(_coco_ground_truth(), [])
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)
    with pytest.raises(ImportError, match=r"pip install 'paligemma\[eval\]'"):
        cider({1: "a dog"}, {1: ["a dog"]})


def test_coco_ground_truth_without_info_is_given_one():
    # pycocotools 2.0.10's loadRes copies gt.dataset["info"] (KeyError without it; 2.0.11 reads
    # it with .get): seen on a GPU machine with 2.0.10 scoring the embedded model's detections.
    from paligemma.metrics.coco import _ground_truth

    gt = _coco_ground_truth()
    assert "info" not in gt
    assert _ground_truth(COCO, gt).dataset["info"] == {}
    assert "info" not in gt  # the caller's dict is left as it was
