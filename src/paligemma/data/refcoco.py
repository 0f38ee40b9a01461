"""RefCOCO / RefCOCO+ / RefCOCOg: one Record per referring expression, its object the referred
instance. Two layouts: the official refs (as JSON: the same records as refs(unc).p, which is a
pickle and never unpickled here) with the COCO instances file, or the parquet layout of the
Hugging Face copies (lmms-lab/RefCOCO style: image bytes, answer = the expressions, bbox as
[x, y, w, h], segmentation as one flat polygon)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .coco import mask_decoder, read_instances
from .hf import hf_rows
from .records import (
    DataFormatError,
    Dataset,
    Record,
    Target,
    field_of,
    image_size,
    read_json,
    xywh_box,
)

PICKLES = (".p", ".pkl", ".pickle")


def read_refcoco(
    path: str | os.PathLike,
    annotations: str | os.PathLike | None,
    images: Path | None,
    split: str | None,
    limit: int | None,
) -> Dataset:
    """The referring expressions of `path` (refs JSON + `annotations` = instances JSON, or
    parquet) as Records: prompt the expression, objects [the referred instance], meta ref_id,
    ann_id, image_id, split, category."""
    path = Path(path)
    if path.suffix.lower() in PICKLES:
        raise DataFormatError(
            f"{path} is a pickle, which we never load (unpickling can run any code): give the "
            "refs as JSON, the same list of records (ref_id, image_id, ann_id, category_id, "
            "sentences [{sent}], split), or the Hugging Face parquet copies (lmms-lab/RefCOCO)"
        )
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return _read_parquet(path, images, split, limit)
    if annotations is None:
        raise DataFormatError(
            f"{path}: RefCOCO refs need the COCO instances file too (--annotations "
            "instances.json, the file beside refs(unc).p)"
        )
    instances, by_ann = read_instances(annotations, images, None)
    refs = read_json(path, "RefCOCO refs")
    refs = refs.get("refs") if isinstance(refs, dict) else refs
    if not isinstance(refs, list):
        raise DataFormatError(f"{path}: expected a JSON list of refs")
    out: list[Record] = []
    for i, ref in enumerate(refs):
        where = f"{path}: record {i}"
        if split is not None and field_of(ref, "split", str, where) != split:
            continue
        out += _ref_records(ref, where, by_ann)
        if limit is not None and len(out) >= limit:
            break
    return Dataset(out[:limit], "refcoco", path, instances.categories, instances.coco)


def _ref_records(ref: Any, where: str, by_ann: dict) -> list[Record]:
    ann_id = field_of(ref, "ann_id", int, where)
    if ann_id not in by_ann:
        raise DataFormatError(f"{where}: ann_id {ann_id} is not in the instances file")
    image, target = by_ann[ann_id]
    if field_of(ref, "image_id", int, where) != image.id:
        raise DataFormatError(f"{where}: image_id {ref['image_id']} is not that of ann {ann_id}")
    ref_id = field_of(ref, "ref_id", int, where)
    meta = {"ref_id": ref_id, "ann_id": ann_id, "image_id": image.id, "split": ref.get("split")}
    meta["category"] = target.label
    out = []
    for k, sentence in enumerate(field_of(ref, "sentences", list, where)):
        text = field_of(sentence, "sent", str, f"{where} sentence {k}").strip()
        sid = sentence.get("sent_id", f"{ref_id}/{k}")
        out.append(
            Record(sid, image.images, text, [], [target], image.width, image.height, where, meta)
        )
    return out


def _read_parquet(path: Path, images: Path | None, split: str | None, limit: int | None):
    out: list[Record] = []
    root = Path(images) if images is not None else (path if path.is_dir() else path.parent)
    for where, row in hf_rows(path, split):
        out += _row_records(row, where, root)
        if limit is not None and len(out) >= limit:
            break
    return Dataset(out[:limit], "refcoco", path)


def _row_records(row: dict, where: str, root: Path) -> list[Record]:
    from .folder import image_refs

    key = next((k for k in ("answer", "answers", "sentences", "sentence") if k in row), None)
    texts = row.get(key) if key else None
    texts = [texts] if isinstance(texts, str) else texts
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataFormatError(f'{where}: "answer" must hold the referring expression(s)')
    [image] = image_refs(row.get("image") or row.get("file_name"), root, where)
    box = xywh_box(row.get("bbox"), where)
    width = height = decode = None
    segm = row.get("segmentation")
    if segm:
        width, height = image_size(image, where)
        polygons = [segm] if all(isinstance(v, int | float) for v in segm) else segm
        decode = mask_decoder(polygons, height, width, where)
    meta = {k: row[k] for k in ("question_id", "file_name", "image_id") if k in row}
    base = row.get("question_id", where.rsplit(" ", 1)[-1])
    out = []
    for k, text in enumerate(texts):
        target = Target(text.strip(), box, None, None, bool(row.get("iscrowd")), decode)
        record_id = f"{base}/{k}"
        out.append(
            Record(record_id, (image,), text.strip(), [], [target], width, height, where, meta)
        )
    return out
