"""Hugging Face data on disk: a `datasets` directory (`save_to_disk`, read with
`datasets.load_from_disk`) or parquet files (read with pyarrow), rows as in folder.py with
images as paths or bytes (Image features are read undecoded: {"bytes", "path"})."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .folder import rows_to_records
from .records import DataFormatError, Dataset, require

BATCH = 256  # parquet rows converted to Python at a time


def read_hf(
    path: str | os.PathLike, images: Path | None, split: str | None, limit: int | None
) -> Dataset:
    """Rows of a saved `datasets` directory or of parquet files as Records."""
    path = Path(path)
    root = Path(images) if images is not None else (path if path.is_dir() else path.parent)
    return Dataset(list(rows_to_records(hf_rows(path, split), root, limit)), "hf", path)


def hf_rows(path: Path, split: str | None) -> Iterator[tuple[str, dict]]:
    """(where, row) of each row; `where` is "FILE: record N" (N from 0 in that file/split)."""
    if not path.exists():
        raise DataFormatError(f"no such file or folder: {path}")
    parquet = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if path.is_dir() and not any(
        (path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        if not parquet:
            raise DataFormatError(f"{path}: neither a saved datasets directory nor parquet files")
        if split:
            parquet = [p for p in parquet if split in p.relative_to(path).as_posix()]
        for file in parquet:
            yield from _parquet_rows(file)
        return
    if path.is_file():
        yield from _parquet_rows(path)
        return
    yield from _saved_rows(path, split)


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    pq = require("pyarrow.parquet", "data", "reading parquet files")
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError for a bad file
        raise DataFormatError(f"{path}: not a parquet file ({e})") from None
    n = 0
    for batch in file.iter_batches(batch_size=BATCH):
        for row in batch.to_pylist():
            yield f"{path}: record {n}", row
            n += 1


def _saved_rows(path: Path, split: str | None) -> Iterator[tuple[str, dict]]:
    datasets = require("datasets", "data", "reading a Hugging Face datasets directory")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / its own errors
        raise DataFormatError(f"{path}: not a saved datasets directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if chosen not in names:
            raise DataFormatError(f"{path}: choose a split with --split ({', '.join(names)})")
        ds, path = ds[chosen], path / chosen
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):  # the bytes / path, not a decoded PIL image
            ds = ds.cast_column(name, datasets.Image(decode=False))
    for n, row in enumerate(ds):
        yield f"{path}: record {n}", row
