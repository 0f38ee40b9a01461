"""Metrics: each benchmark's score exactly as its reference defines it (pure functions).

`vqa.py` VQAv2/TextVQA accuracy (the official script's rules), exact match, POPE; `text.py` ANLS and
ChartQA relaxed accuracy; `caption.py` CIDEr-D through pycocoevalcap on PTB-tokenised text (Java,
or a pure-Python equivalent of the tokenizer); `refexp.py` referring-expression box accuracy,
mask mIoU / cIoU; `coco.py` COCO detection / instance-segmentation mAP through pycocotools.
Imports: numpy, pycocotools / pycocoevalcap (the `eval` extra), and the core and `tasks/` only.
"""

from .caption import cider, cider_scores, ptb_tokenize, ptb_tokenize_python
from .coco import coco_detection_scores
from .refexp import box_iou, evaluator_mask, mask_iou, refexp_scores
from .text import anls, relaxed_accuracy
from .vqa import exact_match, normalize_vqa, pope_scores, vqa_accuracy

__all__ = [
    "anls",
    "box_iou",
    "cider",
    "cider_scores",
    "coco_detection_scores",
    "evaluator_mask",
    "exact_match",
    "mask_iou",
    "normalize_vqa",
    "pope_scores",
    "ptb_tokenize",
    "ptb_tokenize_python",
    "refexp_scores",
    "relaxed_accuracy",
    "vqa_accuracy",
]
