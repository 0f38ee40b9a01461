"""`read_dataset(fmt, path, ...)`: one entry point over every reader (FORMATS)."""

from __future__ import annotations

import os
from pathlib import Path

from .records import DataFormatError, Dataset

FORMATS = ("jsonl", "coco-instances", "coco-captions", "vqav2", "refcoco", "folder", "hf")


def read_dataset(
    fmt: str,
    path: str | os.PathLike,
    *,
    images: Path | None = None,
    annotations: Path | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """The records of `path` read as `fmt` (one of FORMATS). `images`: the folder image file
    names are relative to (default: beside `path`); `annotations`: the second file of a pair
    (vqav2: the annotations beside the questions; refcoco: the COCO instances beside the refs);
    `split`: keep only this split (refcoco, hf); `limit`: at most this many records."""
    images = Path(images) if images is not None else None
    if fmt == "coco-instances":
        from .coco import read_coco_instances

        return read_coco_instances(path, images, limit)
    if fmt == "coco-captions":
        from .coco import read_coco_captions

        return read_coco_captions(path, images, limit)
    if fmt == "vqav2":
        from .vqa import read_vqav2

        return read_vqav2(path, annotations, images, limit)
    if fmt == "refcoco":
        from .refcoco import read_refcoco

        return read_refcoco(path, annotations, images, split, limit)
    if fmt in ("folder", "jsonl"):
        from .folder import read_folder

        return read_folder(path, images, limit, fmt)
    if fmt == "hf":
        from .hf import read_hf

        return read_hf(path, images, split, limit)
    raise DataFormatError(f"unknown data format {fmt!r}: one of {', '.join(FORMATS)}")
