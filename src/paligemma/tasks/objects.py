"""Detection / segmentation text <-> objects with boxes, labels and mask codes.

Grammar of what the model emits (objects joined by " ; ", optional free text around):

    <locY1><locX1><locY2><locX2> [<segNNN> x 16] label

Location tokens are y_min, x_min, y_max, x_max in 1024 bins of the *resized square* image; since
images are resized without keeping the aspect ratio, y maps onto the original height and x onto
the original width, each separately. Two conventions exist for bin -> coordinate:

    "big_vision" (default): v = k / 1023, pixel = int(v * size)   (the reference evaluator;
                            exact inverse of the training-target encoder k = round(v * 1023))
    "hf_demo":              v = k / 1024, pixel = round(v * size) (the Hugging Face demo)

Parsing never raises: anything malformed becomes an object with `valid=False` and a `problem`.

Confidence (`score_objects`): an object's score is the geometric mean of the probabilities of
its four <loc> tokens, exp(mean log p), from the log-probs the generation engine returns. The
box tokens carry both whether there is one more object (the first <loc> competes with <eos>)
and where it is; the label that follows is nearly determined by the prompt's label list, and
the <seg> codes describe the shape, not the object's existence. With exactly four tokens per
valid object, the product of the four probabilities ranks objects the same (it is the fourth
power), so COCO AP is the same with either; the geometric mean reads as a probability in [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tokenizer import NUM_LOC, NUM_SEG

SEG_PER_OBJECT = 16  # <seg> codes per mask
CONVENTIONS = ("big_vision", "hf_demo")
_TOKEN = re.compile(r"<loc(\d{4})>|<seg(\d{3})>")


@dataclass
class DetectedObject:
    label: str | None
    box: tuple[int, int, int, int] | None  # (x_min, y_min, x_max, y_max) in original pixels
    box_normalized: tuple[float, float, float, float] | None  # the same in [0, 1]
    locs: tuple[int, ...]  # the location bins as emitted: y_min, x_min, y_max, x_max
    seg_codes: list[int] | None  # 16 VQ-VAE codes for segmentation, else None
    valid: bool = True
    problem: str | None = None  # why it is not valid
    score: float | None = None  # confidence in [0, 1] (score_objects), None when not known
    mask: np.ndarray | None = field(default=None, repr=False)  # bool[H, W], after segment()
    soft_mask: np.ndarray | None = field(default=None, repr=False)  # float32[H, W] in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: box, label, codes, validity (masks as COCO RLE when present)."""
        out = {
            "label": self.label,
            "box": list(self.box) if self.box else None,
            "box_normalized": list(self.box_normalized) if self.box_normalized else None,
            "locs": list(self.locs),
            "seg_codes": self.seg_codes,
            "valid": self.valid,
            "problem": self.problem,
            "score": self.score,
        }
        if self.mask is not None:
            out["mask_rle"] = mask_to_rle(self.mask)
        return out


class ObjectList(list):
    """A list of DetectedObject that also keeps the raw generated text."""

    def __init__(self, objects: list[DetectedObject], text: str, width: int, height: int):
        super().__init__(objects)
        self.text, self.width, self.height = text, width, height

    def to_coco(
        self, image_id: int = 0, categories: dict[str, int] | None = None, first_id: int = 1
    ) -> list[dict]:
        """COCO results for the valid objects, as `COCO.loadRes` + `COCOeval` take them:
        image_id, category_id, bbox [x, y, w, h], score (1.0 when not known), segmentation as
        compressed RLE. `categories` (label -> id, e.g. the dataset's or the prompt's labels)
        keeps ids stable across images; objects with a label outside it are left out. Without
        it, labels are numbered in order of first appearance (one image only)."""
        given = categories is not None
        categories = dict(categories or {})
        out = []
        for obj in (o for o in self if o.valid):
            if obj.label not in categories:
                if given:
                    continue
                categories[obj.label] = len(categories) + 1
            x0, y0, x1, y1 = obj.box
            ann = {
                "id": first_id + len(out),
                "image_id": image_id,
                "category_id": categories[obj.label],
                "label": obj.label,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": 1.0 if obj.score is None else obj.score,
                "area": int(obj.mask.sum()) if obj.mask is not None else (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if obj.mask is not None:
                ann["segmentation"] = mask_to_rle(obj.mask, compressed=True)
            out.append(ann)
        return out


def coco_categories(labels: list[str] | dict[str, int]) -> list[dict]:
    """COCO `categories` entries: [{"id", "name"}], ids 1.. in the list's order (or as given)."""
    ids = labels if isinstance(labels, dict) else {x: i + 1 for i, x in enumerate(labels)}
    return [{"id": i, "name": name} for name, i in ids.items()]


def score_objects(objects: list[DetectedObject], loc_logprobs: list[float]) -> None:
    """Set each object's `.score` from the log-probs of the answer's <loc> tokens (in order;
    see the module docstring); objects whose tokens have none keep None."""
    pos = 0
    for obj in objects:
        part = loc_logprobs[pos : pos + len(obj.locs)]
        pos += len(obj.locs)
        if part and len(part) == len(obj.locs):
            obj.score = float(np.exp(np.mean(part)))


# ---------------------------------------------------------------------------------------------
# text -> objects


def _to_unit(k: int, convention: str) -> float:
    return k / 1023 if convention == "big_vision" else k / 1024


def _to_pixel(v: float, size: int, convention: str) -> int:
    return int(v * size) if convention == "big_vision" else round(v * size)


def _finish(locs, segs, label, width, height, convention) -> DetectedObject:
    label = label.strip() if label else None
    obj = DetectedObject(label or None, None, None, tuple(locs), list(segs) if segs else None)
    if len(locs) < 4:
        obj.valid, obj.problem = False, f"truncated box ({len(locs)} of 4 location tokens)"
        return obj
    if segs and len(segs) != SEG_PER_OBJECT:
        obj.valid, obj.problem = False, f"{len(segs)} segmentation tokens, not {SEG_PER_OBJECT}"
    elif max(locs) >= NUM_LOC or (segs and max(segs) >= NUM_SEG):
        obj.valid, obj.problem = False, "token out of range (<loc> > 1023 or <seg> > 127)"
    y0, x0, y1, x1 = (_to_unit(k, convention) for k in locs)
    obj.box_normalized = (x0, y0, x1, y1)
    obj.box = (
        _to_pixel(x0, width, convention),
        _to_pixel(y0, height, convention),
        _to_pixel(x1, width, convention),
        _to_pixel(y1, height, convention),
    )
    if obj.valid and not (locs[2] > locs[0] and locs[3] > locs[1]):
        obj.valid, obj.problem = False, "unordered box (max <= min)"
    elif obj.valid and not (obj.box[2] > obj.box[0] and obj.box[3] > obj.box[1]):
        obj.valid, obj.problem = False, f"box is empty at {width}x{height} pixels"
    return obj


def parse_objects(text: str, width: int, height: int, convention: str = "big_vision") -> ObjectList:
    """Objects in a detect/segment answer, boxes in pixels of the original (width, height) image."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    objects: list[DetectedObject] = []
    locs: list[int] = []
    segs: list[int] = []
    label: str | None = None  # text after the tokens of the current object
    active = False

    def close() -> None:
        nonlocal locs, segs, label, active
        if active:
            objects.append(_finish(locs, segs, label, width, height, convention))
        locs, segs, label, active = [], [], None, False

    pos = 0
    for m in _TOKEN.finditer(text):
        gap = text[pos : m.start()]
        pos = m.end()
        if active and gap.strip():  # text between tokens: a label, maybe ending at ";"
            head, sep, _ = gap.partition(";")
            label = (label or "") + head
            if sep:
                close()
        if m.group(1) is not None:  # <locNNNN>
            if active and (segs or label or len(locs) == 4):
                close()
            locs.append(int(m.group(1)))
            active = True
        else:  # <segNNN>
            if not active or label is not None:  # codes without a box of their own
                close()
                active = True
            segs.append(int(m.group(2)))
    if active:
        label = (label or "") + text[pos:].partition(";")[0]
    close()
    return ObjectList(objects, text, width, height)


# ---------------------------------------------------------------------------------------------
# objects -> text (training targets)


def box_to_locs(box: tuple[float, float, float, float], width: int, height: int) -> list[int]:
    """(x_min, y_min, x_max, y_max) in pixels -> location bins [y_min, x_min, y_max, x_max],
    k = clip(round(v * 1023), 0, 1023) as big_vision's target encoder does."""
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {box} is empty or unordered")
    values = (y0 / height, x0 / width, y1 / height, x1 / width)
    return [min(max(round(v * (NUM_LOC - 1)), 0), NUM_LOC - 1) for v in values]


def loc_string(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """A box as its four tokens, e.g. "<loc0123><loc0045><loc0800><loc0712>"."""
    return "".join(f"<loc{k:04d}>" for k in box_to_locs(box, width, height))


def seg_string(codes: list[int]) -> str:
    """16 VQ-VAE codes as "<segNNN>" tokens."""
    codes = [int(c) for c in codes]
    if len(codes) != SEG_PER_OBJECT or not all(0 <= c < NUM_SEG for c in codes):
        raise ValueError(f"expected {SEG_PER_OBJECT} codes in [0, {NUM_SEG}), got {codes}")
    return "".join(f"<seg{c:03d}>" for c in codes)


def objects_to_suffix(objects: list[dict], width: int, height: int) -> str:
    """A training suffix in the format the model emits, from [{"box": (x0, y0, x1, y1),
    "label": "cat", "seg_codes": [16 ints] (optional)}, ...]: "<loc>x4[<seg>x16] cat ; ..."."""
    parts = []
    for obj in objects:
        text = loc_string(obj["box"], width, height)
        if obj.get("seg_codes") is not None:
            text += seg_string(obj["seg_codes"])
        if obj.get("label"):
            text += " " + str(obj["label"]).strip()
        parts.append(text)
    return " ; ".join(parts)


# ---------------------------------------------------------------------------------------------
# masks <-> COCO run-length encoding


def mask_to_rle(mask: np.ndarray, compressed: bool = False) -> dict[str, Any]:
    """COCO RLE: column-major run lengths, starting with a run of zeros; `compressed` gives
    the counts as COCO's string (what pycocotools' `encode` writes), else as a list."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    size = [int(mask.shape[0]), int(mask.shape[1])]
    return {"size": size, "counts": _rle_string(counts) if compressed else counts}


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed counts (maskApi.c rleToString): each count, less the one two before
    it (from the third on), in 5-bit groups, low first, 0x20 = more follow, plus 48."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _rle_counts(text: str) -> list[int]:
    """Inverse of `_rle_string` (maskApi.c rleFrString)."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << (5 * k)
            more, pos, k = bool(c & 0x20), pos + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of `mask_to_rle` (counts as a list or COCO's string)."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode()
    if isinstance(counts, str):
        counts = _rle_counts(counts)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def task_prompt(task: str, labels: str | list[str]) -> str:
    """ "detect cat ; dog" from ["cat", "dog"] (or "cat"); clear errors for empty labels or ';'."""
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError(f"{task} needs at least one non-empty label")
    if any(";" in x for x in labels):
        raise ValueError("labels may not contain ';' (it separates them)")
    return f"{task} " + " ; ".join(x.strip() for x in labels)
