"""Tables of examples: a CSV or JSONL file (or a folder holding one) whose rows name an image
and its text: `prefix` + `suffix` (our training JSONL), `question` + `answer`/`answers`, or
`caption`/`captions`. The same row rules serve Hugging Face rows (hf.py): an image is a path
(relative to the images folder), bytes, or an HF Image dict {"bytes", "path"}.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .records import DataFormatError, Dataset, Record

IMAGE_COLUMNS = ("image", "images", "file_name", "image_path", "path")
TABLE_NAMES = ("metadata.jsonl", "metadata.csv")  # the Hugging Face imagefolder convention


def read_folder(
    path: str | os.PathLike, images: Path | None, limit: int | None, fmt: str = "folder"
) -> Dataset:
    """Rows of a CSV / JSONL file (or of the one such table in a folder) as Records, images
    relative to `images` (default: the table's folder)."""
    table = find_table(Path(path))
    root = Path(images) if images is not None else table.parent
    rows = _csv_rows(table) if table.suffix.lower() == ".csv" else _jsonl_rows(table)
    return Dataset(list(rows_to_records(rows, root, limit)), fmt, table)


def find_table(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataFormatError(f"no such file or folder: {path}")
    for name in TABLE_NAMES:
        if (path / name).is_file():
            return path / name
    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".jsonl"))
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise DataFormatError(f"{path}: expected one .csv or .jsonl table (found: {found})")
    return tables[0]


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise DataFormatError(
                        f"{path}:line {reader.line_num}: {len(reader.fieldnames or [])} columns "
                        "in the header, another number in this row"
                    )
                yield f"{path}:line {reader.line_num}", row
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataFormatError(f"{path}:line {reader.line_num}: not CSV ({e})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:line {n}"
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataFormatError(f"{where}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{where}: not a JSON object")
            yield where, row


def rows_to_records(
    rows: Iterable[tuple[str, dict]], root: Path, limit: int | None
) -> Iterator[Record]:
    for n, (where, row) in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row_record(row, n, where, root)


def row_record(row: dict[str, Any], n: int, where: str, root: Path) -> Record:
    """One row as a Record (id: its "id" / "question_id" column, else its index `n`)."""
    column = next((c for c in IMAGE_COLUMNS if row.get(c) not in (None, "")), None)
    if column is None:
        raise DataFormatError(f"{where}: no image (a column {' / '.join(IMAGE_COLUMNS)})")
    images = image_refs(row[column], root, where)
    prompt, answers, kind = _texts(row, where)
    record_id = next((row[k] for k in ("id", "question_id") if row.get(k) not in (None, "")), n)
    meta = {"kind": kind} | {k: v for k, v in row.items() if k in ("image_id", "answer_type")}
    return Record(record_id, images, prompt, answers, [], None, None, where, meta)


def image_refs(value: Any, root: Path, where: str) -> tuple[Path | bytes, ...]:
    """A row's image(s) as paths (relative to `root`) or bytes."""
    values = value if isinstance(value, list) else [value]
    out: list[Path | bytes] = []
    for v in values:
        if isinstance(v, dict):  # a Hugging Face Image feature, undecoded
            v = v.get("bytes") or v.get("path")
        if isinstance(v, bytes | bytearray) and v:
            out.append(bytes(v))
        elif isinstance(v, str) and v.strip():
            out.append(root / v.strip())
        else:
            raise DataFormatError(f"{where}: an image must be a path or image bytes")
    if not out:
        raise DataFormatError(f"{where}: an empty list of images")
    return tuple(out)


def _texts(row: dict[str, Any], where: str) -> tuple[str | None, list[str], str]:
    """(prompt, answers, kind) of a row: prefix/suffix, question/answer(s) or caption(s)."""
    if "prefix" in row or "suffix" in row:
        return _text(row, "prefix", where), _answers(row, "suffix", where), "prefix"
    if "question" in row:
        key = "answers" if "answers" in row else "answer"
        return _text(row, "question", where), _answers(row, key, where, empty=True), "question"
    for key in ("caption", "captions"):
        if key in row:
            return None, _answers(row, key, where), "caption"
    raise DataFormatError(
        f"{where}: no text columns (prefix + suffix, question + answer, or caption)"
    )


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataFormatError(f'{where}: "{key}" must be a string')
    return value


def _answers(row: dict[str, Any], key: str, where: str, empty: bool = False) -> list[str]:
    """A text column's values: a string or a list of strings (VQA answers may be dicts
    {"answer": ...}); empty only where allowed (test questions have no answers)."""
    value = row.get(key)
    values = value if isinstance(value, list) else [] if value is None else [value]
    values = [v.get("answer") if isinstance(v, dict) else v for v in values]
    if not all(isinstance(v, str) for v in values):
        raise DataFormatError(f'{where}: "{key}" must be a string or a list of strings')
    values = [v for v in values if v.strip()]
    if not values and not empty:
        raise DataFormatError(f'{where}: empty or missing "{key}"')
    return values
