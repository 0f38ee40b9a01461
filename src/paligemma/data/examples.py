"""Records -> training examples {"image", "prefix", "suffix"}: the prompts the released
checkpoints know (`caption en`, `answer en Q`, `detect a ; b`, `segment a`) and the suffix the
model must emit (`<loc>` boxes, `<seg>` codes from the mask VQ-VAE's encoder).

Objects, as big_vision's detection transfers build targets: every non-crowd object in random
order (seeded per record), capped at `max_objects` (a random subset is kept); the prompt names
the labels of the objects kept, plus with `negatives` as many categories absent from the image
(crowd-only ones excluded), all in random order. A record left with no object gives no example
(the JSONL format needs a non-empty suffix).

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..checkpoints.assets import find_mask_vae
from ..tasks.objects import objects_to_suffix, task_prompt
from ..tasks.vqvae import MaskVAE, load_mask_vae, mask_to_codes
from .records import DataFormatError, Dataset, Record, Target, image_size

TASKS = ("caption", "answer", "detect", "segment", "prefix")
EMBEDDED_ASSETS = Path(__file__).parents[1] / "assets"


def to_examples(
    dataset: Dataset | list[Record],
    task: str,
    *,
    mask_vae: MaskVAE | str | Path | None = None,
    negatives: bool = False,
    max_objects: int | None = None,
    seed: int = 0,
    language: str = "en",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Training examples of `dataset` for `task` (one of TASKS): {"image": path or bytes (a
    list when a record has several), "prefix", "suffix", "id": the record's id}. `mask_vae`
    (segment only): a MaskVAE or its file; default the embedded model's. `progress`: a bar on
    stderr."""
    from tqdm import tqdm

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if max_objects is not None and max_objects < 1:
        raise ValueError("max_objects must be >= 1")
    vae = _mask_vae(mask_vae) if task == "segment" else None
    categories = sorted(
        set(getattr(dataset, "categories", {}).values())
        or {t.label for r in dataset for t in r.objects}
    )
    out = []
    bar = tqdm(dataset, desc="converting", unit="record", file=sys.stderr, disable=not progress)
    for n, record in enumerate(bar):
        rng = random.Random(f"{seed}/{n}")
        if task in ("detect", "segment"):
            pairs = _object_examples(
                record, task, vae, categories if negatives else [], rng, max_objects
            )
        else:
            pairs = _text_examples(record, task, language)
        image = record.images[0] if len(record.images) == 1 else list(record.images)
        out += [{"image": image, "prefix": p, "suffix": s, "id": record.id} for p, s in pairs]
    return out


def _text_examples(record: Record, task: str, language: str) -> list[tuple[str, str]]:
    answers = [a.strip() for a in record.answers if a and a.strip()]
    if not answers:
        raise DataFormatError(f"{record.where}: no answer, caption or suffix to train on")
    if task == "caption":
        return [(f"caption {language}", a) for a in answers]
    if record.prompt is None:
        raise DataFormatError(f"{record.where}: no question or prefix")
    if task == "answer":
        return [(f"answer {language} {record.prompt.strip()}", most_common(answers))]
    return [(record.prompt, answers[0])]


def most_common(answers: list[str]) -> str:
    """The answer given most often (the first of those tied, in the order given)."""
    return Counter(answers).most_common(1)[0][0]


def _object_examples(
    record: Record,
    task: str,
    vae: MaskVAE | None,
    categories: list[str],
    rng: random.Random,
    max_objects: int | None,
) -> list[tuple[str, str]]:
    width, height = record_size(record)
    kept = [t for t in record.objects if not t.iscrowd and _pixel_box(t.box, width, height)]
    rng.shuffle(kept)
    kept = kept[:max_objects]
    if not kept:
        return []
    if record.prompt:  # a referring expression names the object(s): it is their label
        labels = [record.prompt.strip()]
        kept = [  # a lazy mask stays lazy: copying it would decode it here
            Target(labels[0], t.box, None if t.decode else t.mask, t.category_id, False, t.decode)
            for t in kept
        ]
    else:
        labels = list(dict.fromkeys(t.label for t in kept))
        absent = sorted(set(categories) - {t.label for t in record.objects})
        labels += rng.sample(absent, min(len(labels), len(absent)))
        rng.shuffle(labels)
    objects = []
    for t in kept:
        box = _pixel_box(t.box, width, height)
        obj = {"box": box, "label": t.label}
        if task == "segment":
            mask = t.mask
            if mask is None:
                raise DataFormatError(f"{record.where}: an object of {t.label!r} has no mask")
            if mask.shape != (height, width):
                raise DataFormatError(
                    f"{record.where}: mask of shape {mask.shape} for an image of {height}x{width}"
                )
            obj["seg_codes"] = mask_to_codes(vae, mask, box)
        objects.append(obj)
    try:
        prompt = task_prompt(task, labels)
    except ValueError as e:
        raise DataFormatError(f"{record.where}: {e}") from None
    return [(prompt, objects_to_suffix(objects, width, height))]


def _pixel_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A box rounded to whole pixels inside the image (None when nothing is left of it)."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(width, round(box[2])), min(height, round(box[3]))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def record_size(record: Record) -> tuple[int, int]:
    """(W, H) of a record's first image: from the record, else read from the image's header."""
    if not (record.width and record.height):
        record.width, record.height = image_size(record.images[0], record.where)
    return record.width, record.height


def _mask_vae(mask_vae: MaskVAE | str | Path | None) -> MaskVAE:
    if isinstance(mask_vae, MaskVAE):
        return mask_vae
    path = mask_vae if mask_vae is not None else find_mask_vae(EMBEDDED_ASSETS)
    if path is None:
        raise FileNotFoundError(f"no mask VQ-VAE in {EMBEDDED_ASSETS}: pass mask_vae=PATH")
    return load_mask_vae(path)
