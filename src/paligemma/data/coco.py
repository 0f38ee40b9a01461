"""COCO-format readers: instances (boxes, polygon and RLE masks, decoded with pycocotools.mask)
and captions; one Record per image, images by `file_name` under the images folder.

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .records import (
    DataFormatError,
    Dataset,
    Record,
    Target,
    field_of,
    list_of,
    read_json,
    require,
    xywh_box,
)


def read_images(data: Any, path: Path, images: Path, limit: int | None) -> dict[int, Record]:
    """COCO's "images" list as Records with no objects yet (id -> Record), in file order."""
    out: dict[int, Record] = {}
    for i, item in enumerate(list_of(data, "images", path)):
        where = f"{path}: images record {i}"
        image_id = field_of(item, "id", int, where)
        name = field_of(item, "file_name", str, where)
        size = [item.get(k) for k in ("width", "height")]
        if not all(v is None or (isinstance(v, int) and v > 0) for v in size):
            raise DataFormatError(f"{where}: width and height must be positive integers")
        if image_id in out:
            raise DataFormatError(f"{where}: image id {image_id} appears twice")
        meta = {"image_id": image_id, "file_name": name}
        out[image_id] = Record(image_id, (images / name,), None, [], [], *size, where, meta)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_categories(data: Any, path: Path) -> dict[int, str]:
    """COCO's "categories" list as id -> name."""
    categories = {}
    for i, item in enumerate(list_of(data, "categories", path)):
        where = f"{path}: categories record {i}"
        categories[field_of(item, "id", int, where)] = field_of(item, "name", str, where).strip()
    return categories


def read_coco_instances(
    path: str | os.PathLike, images: Path | None = None, limit: int | None = None
) -> Dataset:
    """A COCO instances JSON (images, categories, annotations with bbox, optional
    segmentation as polygons or RLE, iscrowd): one Record per image, its objects as Targets."""
    return read_instances(path, images, limit)[0]


def read_instances(
    path: str | os.PathLike, images: Path | None, limit: int | None
) -> tuple[Dataset, dict[Any, tuple[Record, Target]]]:
    """read_coco_instances, and each annotation's (image Record, Target) by annotation id."""
    path = Path(path)
    data = read_json(path, "COCO instances")
    records = read_images(data, path, Path(images or path.parent), limit)
    categories = read_categories(data, path)
    by_id = {}
    for i, item in enumerate(list_of(data, "annotations", path)):
        where = f"{path}: annotations record {i}"
        record = records.get(field_of(item, "image_id", int, where))
        if record is None:
            if limit is None:
                raise DataFormatError(f"{where}: image_id {item['image_id']} is not in images")
            continue
        category = field_of(item, "category_id", int, where)
        if category not in categories:
            raise DataFormatError(f"{where}: category_id {category} is not in categories")
        box = xywh_box(item.get("bbox"), where)
        decode = None
        if item.get("segmentation") not in (None, [], {}):
            decode = mask_decoder(item["segmentation"], record.height, record.width, where)
        crowd = bool(item.get("iscrowd", 0))
        target = Target(categories[category], box, None, category, crowd, decode)
        record.objects.append(target)
        by_id[item.get("id", f"#{i}")] = record, target
    return Dataset(list(records.values()), "coco-instances", path, categories, data), by_id


def read_coco_captions(
    path: str | os.PathLike, images: Path | None = None, limit: int | None = None
) -> Dataset:
    """A COCO captions JSON (images, annotations with image_id and caption): one Record per
    image, its captions as `answers`."""
    path = Path(path)
    data = read_json(path, "COCO captions")
    records = read_images(data, path, Path(images or path.parent), limit)
    for i, item in enumerate(list_of(data, "annotations", path)):
        where = f"{path}: annotations record {i}"
        record = records.get(field_of(item, "image_id", int, where))
        caption = field_of(item, "caption", str, where).strip()
        if record is None:
            if limit is None:
                raise DataFormatError(f"{where}: image_id {item['image_id']} is not in images")
            continue
        if not caption:
            raise DataFormatError(f"{where}: empty caption")
        record.answers.append(caption)
    return Dataset(list(records.values()), "coco-captions", path)


def mask_decoder(
    segm: Any, height: int | None, width: int | None, where: str
) -> Callable[[], np.ndarray]:
    """A function giving the bool[H, W] mask of a COCO segmentation (polygons, uncompressed or
    compressed RLE), decoded by pycocotools when called (reading boxes needs no extra). Its
    structure is checked now, so that a bad one names its record at once."""
    if isinstance(segm, list):
        if not height or not width:
            raise DataFormatError(f"{where}: polygons need the image's width and height")
        for poly in segm:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not ok or not all(isinstance(v, int | float) for v in poly):
                raise DataFormatError(
                    f"{where}: a polygon must be a list of x, y numbers (at least 3 points)"
                )
        size = [height, width]
    elif isinstance(segm, dict):
        size = _check_rle(segm, height, width, where)
    else:
        raise DataFormatError(f'{where}: "segmentation" must be polygons or an RLE dict')

    def decode() -> np.ndarray:
        mask_utils = require("pycocotools.mask", "coco", "decoding COCO masks")
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, *size))
        elif isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, *size)
        else:
            rle = {"size": size, "counts": segm["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)

    return decode


def _check_rle(segm: dict, height: int | None, width: int | None, where: str) -> list[int]:
    """An RLE's [H, W], once its fields are checked."""
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise DataFormatError(f'{where}: an RLE needs "size": [height, width]')
    if (height, width) != (None, None) and list(size) != [height, width]:
        raise DataFormatError(f"{where}: RLE size {size} is not the image's {[height, width]}")
    if isinstance(counts, list):
        ints = all(isinstance(c, int) and c >= 0 for c in counts)
        if not ints or sum(counts) != size[0] * size[1]:
            raise DataFormatError(f"{where}: RLE counts must be >= 0 and sum to height x width")
    elif not isinstance(counts, str):
        raise DataFormatError(f'{where}: RLE "counts" must be a list of ints or a string')
    return list(size)
