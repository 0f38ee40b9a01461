"""What every dataset reader returns: Record / Target / Dataset, the one error type, and the
small helpers readers share (JSON files, required fields, optional packages).

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DataFormatError(ValueError):
    """A dataset file that does not hold what its format says; the message names the file and
    the line or record number."""


class MissingExtra(ImportError, RuntimeError):
    """An optional package a reader needs is not installed; the message says what to install."""


@dataclass
class Target:
    """One object: its label, box (x0, y0, x1, y1 pixels of the original image), mask
    (bool[H, W] or None), the dataset's category id and COCO's crowd flag. A reader may give
    `decode` instead of a mask: `.mask` then decodes it on each use (a dataset's masks are not
    all held in memory at once)."""

    label: str
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    category_id: int | None = None
    iscrowd: bool = False
    decode: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)


def _get_mask(self: Target) -> np.ndarray | None:
    if self._mask is None and self.decode is not None:
        return self.decode()
    return self._mask


def _set_mask(self: Target, value: np.ndarray | None) -> None:
    self._mask = value


Target.mask = property(_get_mask, _set_mask)  # type: ignore[assignment]


@dataclass
class Record:
    """One example as a dataset states it. `prompt` is the question / referring expression /
    prefix without any task prefix ("answer en " ...); `answers` the reference answers,
    captions or suffix; `where` ("FILE:line N" or "FILE: record N") names it in every error."""

    id: int | str
    images: tuple[Path | bytes, ...]
    prompt: str | None = None
    answers: list[str] = field(default_factory=list)
    objects: list[Target] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    where: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset(list):
    """A list of Record, with the format it was read as, its source, the categories (COCO id ->
    name; empty when none) and, for COCO instances, the ground-truth dict (for mAP)."""

    def __init__(
        self,
        records: list[Record],
        format: str,
        source: str | os.PathLike,
        categories: dict[int, str] | None = None,
        coco: dict | None = None,
    ) -> None:
        super().__init__(records)
        self.format, self.source = format, str(source)
        self.categories = dict(categories or {})
        self.coco = coco


def require(module: str, extra: str, what: str) -> Any:
    """`module` imported, or MissingExtra saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"{what} needs the {module.split('.')[0]} package: pip install 'paligemma[{extra}]'"
        ) from e


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's content; a missing or unparsable file is a DataFormatError naming it (and
    the line and column where parsing stopped)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"no such {what} file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}:line {e.lineno}: not JSON ({e.msg}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e})") from None


def field_of(item: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`item[key]`, which must be of `kind`; otherwise a DataFormatError at `where`."""
    if not isinstance(item, dict):
        raise DataFormatError(f"{where}: not a JSON object")
    if key not in item:
        raise DataFormatError(f'{where}: missing "{key}"')
    value = item[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        names = "/".join(k.__name__ for k in _tuple(kind))
        raise DataFormatError(f'{where}: "{key}" must be {names}, not {value!r:.60}')
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def list_of(data: Any, key: str, path: Path) -> list:
    """The list `data[key]` of a JSON file's top-level object."""
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: the top level must be a JSON object")
    value = data.get(key)
    if not isinstance(value, list):
        raise DataFormatError(f'{path}: missing the list "{key}"')
    return value


def xywh_box(value: Any, where: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] box as (x0, y0, x1, y1)."""
    ok = isinstance(value, list | tuple) and len(value) == 4
    if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise DataFormatError(f'{where}: "bbox" must be [x, y, width, height], not {value!r:.60}')
    x, y, w, h = (float(v) for v in value)
    if w < 0 or h < 0:
        raise DataFormatError(f'{where}: "bbox" has a negative width or height: {value}')
    return (x, y, x + w, y + h)


def image_size(image: Path | bytes, where: str) -> tuple[int, int]:
    """(W, H) of an image file or bytes, from its header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{where}: cannot read its image ({e})") from None
